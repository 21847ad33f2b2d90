"""State and trajectory certificates of RL policies (see docs/certificates.md).

State certificates (``certify_states``): per state, the greedy action, whether
it is certified at eps, margin lower bounds, certified radius, output/value
bounds (discrete) or action-mean bounds and max deviation (continuous), by a
sound bound method (ibp, crown, crown-ibp, alpha-crown, lipschitz, exact) or
randomized smoothing (probabilistic); the methods live in one registry
(``certrl.certify.methods``). Trajectory certificates: ACR and
certified trajectories along seeded episodes, the policy-smoothing certified
expected return, the S-DQN median bound, and GWC (a heuristic).
"""

from certrl.certify.methods import (
    METHODS,
    BabConfig,
    CertifyOptions,
    CertMethod,
    get_method,
    method_names,
)
from certrl.certify.run import (
    TRAJ_METHODS,
    CertifySettings,
    all_methods,
    run_certify,
    summarize,
)
from certrl.certify.state import (
    BOUND_METHODS,
    KIND,
    STATE_METHODS,
    ExactConfig,
    RadiusConfig,
    SmoothingConfig,
    StateCertificates,
    certified_radius,
    certify_states,
    is_lipschitz_net,
)
from certrl.certify.trajectory import (
    Episode,
    dkw_margin,
    episode_l2_budget,
    episode_summary,
    gwc_rollout,
    policy_smoothing_bound,
    pooled_acr,
    rollout,
    sdqn_median_bound,
    smoothed_returns,
)
from certrl.records import append_rows_atomic, read_rows  # the shared reader / appender

__all__ = [
    "BOUND_METHODS", "BabConfig", "KIND", "METHODS", "CertMethod", "CertifyOptions", "get_method",
    "method_names", "STATE_METHODS", "TRAJ_METHODS", "CertifySettings", "Episode",
    "ExactConfig", "RadiusConfig", "SmoothingConfig", "StateCertificates", "all_methods",
    "append_rows_atomic", "certified_radius", "certify_states", "dkw_margin",
    "episode_l2_budget", "episode_summary", "gwc_rollout", "is_lipschitz_net",
    "policy_smoothing_bound", "pooled_acr", "read_rows", "rollout", "run_certify",
    "sdqn_median_bound", "smoothed_returns", "summarize",
]
