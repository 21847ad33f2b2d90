"""Replay buffers for DQN: plain arrays, and a frame store for frame-stacked images.

``ArrayReplay`` keeps (o, a, r, o', done) in one array per field (classic control, any
vector observation): a ring of ``capacity`` transitions, sampled uniformly,
``idx ~ U{0 .. size-1}`` with one ``rng.integers(0, size, B)`` draw.

``FrameReplay`` keeps stacked uint8 image observations (k, H, W) (Atari: k = 4 frames
of 84 x 84) as single frames, each stored once, and a transition as two rows of k
frame ids (o and o'). A stack that continues the previous transition's o' reuses its
ids; o' = (o[1:], new frame) stores one frame; any other stack (an episode start: the
env's reset padding repeats the first frame) stores its frames, a frame equal to the
one before it in the stack reusing its id. Reconstruction is exact, ``frames[ids]``
equals the observation the env returned, whatever the env's stacking rule, because
reuse is decided by comparing frames, never assumed. Frames live in a ring of
``frame_capacity`` (default capacity + capacity / 16 + 2k: one frame per transition plus
one per episode start for episodes of >= 16 steps); a transition whose oldest frame was
overwritten is evicted with the oldest transitions. Sampling draws a logical index
u ~ U{0 .. size-1} (oldest first), as ``ArrayReplay`` does.

Streams (DQN acting in N envs at once, ``DQNConfig.num_envs``): ``add(..., stream=i)``
tracks the previous o' per stream, so N interleaved episodes still store about one frame
per transition. Within one stream frame ids never decrease; across interleaved streams a
transition may use older frames than the one stored before it, so once a stream other
than 0 has been added, eviction and the checkpointed frame range look at every live
transition's oldest frame (``min_ids``) instead of the oldest transition's only. Stream
0 alone behaves exactly as before.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

ZLIB_LEVEL = 1
FIELDS = ("obs", "next_obs", "actions", "rewards", "dones")


class ArrayReplay:
    """Ring buffer of ``capacity`` transitions, one numpy array per field."""

    kind = "arrays"

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype=np.float32):
        self.capacity = int(capacity)
        self.arrays = {
            "obs": np.zeros((self.capacity, *obs_shape), obs_dtype),
            "next_obs": np.zeros((self.capacity, *obs_shape), obs_dtype),
            "actions": np.zeros(self.capacity, np.int64),
            "rewards": np.zeros(self.capacity, np.float32),
            "dones": np.zeros(self.capacity, np.float32),
        }
        self.pos, self.full = 0, False

    def __len__(self) -> int:
        return self.capacity if self.full else self.pos

    def add(self, obs, action, reward, next_obs, done, stream: int = 0) -> None:
        """Write the transition at ``pos`` (overwriting the oldest once full); ``stream``
        (the env index) is not needed here: every transition holds its own arrays."""
        i, a = self.pos, self.arrays
        a["obs"][i], a["next_obs"][i] = obs, next_obs
        a["actions"][i], a["rewards"][i], a["dones"][i] = action, reward, done
        self.pos = (i + 1) % self.capacity
        self.full = self.full or self.pos == 0

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """B transitions, slots ``rng.integers(0, len, B)``."""
        idx = rng.integers(0, len(self), batch_size)
        return {k: v[idx] for k, v in self.arrays.items()}

    def nbytes(self) -> int:
        """Bytes of the filled part."""
        return int(sum(v[: len(self)].nbytes for v in self.arrays.values()))

    def state_dict(self) -> dict:
        """{"replay": field -> tensor of the filled slots, "buf_pos", "buf_full"}."""
        n = len(self)
        return {"replay": {k: torch.from_numpy(v[:n].copy()) for k, v in self.arrays.items()},
                "buf_pos": self.pos, "buf_full": self.full}

    def load_state_dict(self, st: dict) -> None:
        """Inverse of ``state_dict`` (ValueError when it does not fit ``capacity``)."""
        rep = st["replay"]
        for k, v in rep.items():
            if len(v) > self.capacity:
                raise ValueError(f"the saved replay buffer holds {len(v)} transitions, more "
                                 f"than buffer_size {self.capacity}")
            self.arrays[k][: len(v)] = np.asarray(v)
        self.pos, self.full = int(st["buf_pos"]), bool(st["buf_full"])


class FrameReplay:
    """Frame-stacked uint8 observations (k, H, W), each frame stored once (module doc)."""

    kind = "frames"

    def __init__(self, capacity: int, obs_shape: tuple[int, ...],
                 frame_capacity: int | None = None):
        if len(obs_shape) < 2:
            raise ValueError(f"FrameReplay needs (k, H, ...) observations; got {obs_shape}")
        self.capacity, self.k = int(capacity), int(obs_shape[0])
        self.obs_shape = tuple(obs_shape)
        fc = frame_capacity or self.capacity + self.capacity // 16 + 2 * self.k
        if fc < 2 * self.k:
            raise ValueError(f"frame_capacity must be at least 2k = {2 * self.k}; got {fc}")
        self.frame_capacity = int(fc)
        self.frames = np.zeros((self.frame_capacity, *obs_shape[1:]), np.uint8)
        n = self.capacity
        self.obs_ids = np.zeros((n, self.k), np.int64)  # global frame ids (slot = id % F)
        self.next_ids = np.zeros((n, self.k), np.int64)
        self.actions = np.zeros(n, np.int64)
        self.rewards = np.zeros(n, np.float32)
        self.dones = np.zeros(n, np.float32)
        self.min_ids = np.zeros(n, np.int64)  # oldest frame id of each slot's transition
        self.start, self.size, self.n_frames = 0, 0, 0
        self.last_next: np.ndarray | None = None  # ids of the last stored o' (stream 0)
        self.stream_next: dict[int, np.ndarray] = {}  # the same for streams 1, 2, ...

    def __len__(self) -> int:
        return self.size

    @property
    def pos(self) -> int:
        """The slot the next transition goes to."""
        return (self.start + self.size) % self.capacity

    def _put_frame(self, frame: np.ndarray) -> int:
        fid = self.n_frames
        self.frames[fid % self.frame_capacity] = frame
        self.n_frames += 1
        return fid

    def _put_stack(self, obs: np.ndarray) -> np.ndarray:
        ids = np.empty(self.k, np.int64)
        for j in range(self.k):
            same = j > 0 and np.array_equal(obs[j], obs[j - 1])
            ids[j] = ids[j - 1] if same else self._put_frame(obs[j])
        return ids

    def _holds(self, ids: np.ndarray, obs: np.ndarray) -> bool:
        return bool(np.array_equal(self.frames[ids % self.frame_capacity], obs))

    def add(self, obs, action, reward, next_obs, done, stream: int = 0) -> None:
        """Store the transition (frames reused where equal, see the module docstring);
        ``stream`` is the env the transition comes from (0 with one env)."""
        obs, next_obs = np.asarray(obs), np.asarray(next_obs)
        if obs.shape != self.obs_shape or next_obs.shape != self.obs_shape \
                or obs.dtype != np.uint8 or next_obs.dtype != np.uint8:
            raise ValueError(f"FrameReplay stores uint8 observations of shape "
                             f"{self.obs_shape}; got {obs.dtype} {obs.shape}")
        stream = int(stream)
        prev = self.last_next if stream == 0 else self.stream_next.get(stream)
        # reuse only frames that the (at most k) frames put below cannot overwrite
        if prev is not None and int(prev.min()) >= self.n_frames + self.k - self.frame_capacity \
                and self._holds(prev, obs):
            oi = prev
        else:
            oi = self._put_stack(obs)
        if self.k > 1 and np.array_equal(next_obs[:-1], obs[1:]):
            ni = np.append(oi[1:], self._put_frame(next_obs[-1]))
        else:
            ni = self._put_stack(next_obs)
        self._evict(self.n_frames - self.frame_capacity)
        if self.size == self.capacity:
            self.start = (self.start + 1) % self.capacity
            self.size -= 1
        i = self.pos
        self.obs_ids[i], self.next_ids[i], self.min_ids[i] = oi, ni, oi.min()
        self.actions[i], self.rewards[i], self.dones[i] = action, reward, done
        self.size += 1
        if stream == 0:
            self.last_next = ni
        else:
            self.stream_next[stream] = ni

    @property
    def multi_stream(self) -> bool:
        """True once a stream other than 0 has been added."""
        return bool(self.stream_next)

    def _evict(self, lowest_kept: int) -> None:
        """Drop the oldest transitions while one of them uses a frame id below
        ``lowest_kept``. One stream: ids are non-decreasing in insertion order, so the
        oldest go first. Several streams: through the newest live transition that does."""
        if self.multi_stream:
            if self.size and lowest_kept > 0:
                u = np.nonzero(self.min_ids[self.slots(np.arange(self.size))] < lowest_kept)[0]
                if len(u):
                    drop = int(u[-1]) + 1
                    self.start = (self.start + drop) % self.capacity
                    self.size -= drop
            return
        while self.size and self.obs_ids[self.start].min() < lowest_kept:
            self.start = (self.start + 1) % self.capacity
            self.size -= 1

    def slots(self, u: np.ndarray) -> np.ndarray:
        """Ring slots of logical indices u (0 = oldest transition)."""
        return (self.start + np.asarray(u)) % self.capacity

    def get(self, u: np.ndarray) -> dict[str, np.ndarray]:
        """Transitions at logical indices u, observations rebuilt from the frames."""
        i, fc = self.slots(u), self.frame_capacity
        return {"obs": self.frames[self.obs_ids[i] % fc],
                "next_obs": self.frames[self.next_ids[i] % fc],
                "actions": self.actions[i], "rewards": self.rewards[i], "dones": self.dones[i]}

    def sample(self, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
        """B transitions at logical indices ``rng.integers(0, len, B)``."""
        return self.get(rng.integers(0, self.size, batch_size))

    def _live_frames(self) -> tuple[int, int]:
        if self.multi_stream and self.size:
            lo = int(self.min_ids[self.slots(np.arange(self.size))].min())
        else:
            lo = int(self.obs_ids[self.start].min()) if self.size else self.n_frames
        for ids in [self.last_next, *self.stream_next.values()]:
            if ids is not None:
                lo = min(lo, int(ids.min()))
        return lo, self.n_frames

    def nbytes(self) -> int:
        """Bytes of the live frames and the filled transition rows."""
        lo, hi = self._live_frames()
        per_row = 2 * self.k * 8 + 8 + 4 + 4
        return int((hi - lo) * self.frames[0].nbytes + self.size * per_row)

    def state_dict(self) -> dict:
        """The live frames (zlib level ``ZLIB_LEVEL``: Pong frames shrink ~70x at ~100 MB/s)
        and the transitions, oldest first."""
        lo, hi = self._live_frames()
        i = self.slots(np.arange(self.size))
        t = torch.from_numpy
        frames = self.frames[np.arange(lo, hi) % self.frame_capacity]
        blob = bytearray(zlib.compress(frames.tobytes(), ZLIB_LEVEL))
        rep = {"kind": self.kind, "frames_zlib": torch.frombuffer(blob, dtype=torch.uint8),
               "frame_lo": lo, "n_frames": hi, "obs_ids": t(self.obs_ids[i]),
               "next_ids": t(self.next_ids[i]), "actions": t(self.actions[i]),
               "rewards": t(self.rewards[i]), "dones": t(self.dones[i]),
               "last_next": None if self.last_next is None else t(self.last_next.copy())}
        if self.stream_next:  # other streams' last o' (only then: one-env checkpoints as before)
            keys = sorted(self.stream_next)
            rep["stream_next"] = {"streams": torch.tensor(keys, dtype=torch.int64),
                                  "ids": t(np.stack([self.stream_next[j] for j in keys]))}
        return {"replay": rep, "buf_pos": self.size, "buf_full": self.size == self.capacity}

    def load_state_dict(self, st: dict) -> None:
        """Inverse of ``state_dict``; a buffer saved as stacked arrays (``ArrayReplay``
        format, older checkpoints) is re-added transition by transition, oldest first."""
        rep = st["replay"]
        if rep.get("kind") != self.kind:
            self._load_arrays(rep, int(st["buf_pos"]), bool(st["buf_full"]))
            return
        n, (lo, hi) = len(rep["actions"]), (int(rep["frame_lo"]), int(rep["n_frames"]))
        if n > self.capacity or hi - lo > self.frame_capacity:
            raise ValueError(f"the saved replay buffer ({n} transitions, {hi - lo} frames) "
                             f"does not fit buffer_size {self.capacity}")
        raw = zlib.decompress(np.asarray(rep["frames_zlib"]).tobytes())
        frames = np.frombuffer(raw, np.uint8).reshape(hi - lo, *self.frames.shape[1:])
        self.frames[np.arange(lo, hi) % self.frame_capacity] = frames
        self.obs_ids[:n] = np.asarray(rep["obs_ids"])
        self.next_ids[:n] = np.asarray(rep["next_ids"])
        self.actions[:n], self.rewards[:n] = np.asarray(rep["actions"]), np.asarray(rep["rewards"])
        self.dones[:n] = np.asarray(rep["dones"])
        self.start, self.size, self.n_frames = 0, n, hi
        ln = rep.get("last_next")
        self.last_next = None if ln is None else np.asarray(ln).astype(np.int64)
        sn = rep.get("stream_next")
        self.stream_next = {} if sn is None else {
            int(j): np.asarray(ids).astype(np.int64)
            for j, ids in zip(np.asarray(sn["streams"]), np.asarray(sn["ids"]))}
        self.min_ids[:n] = self.obs_ids[:n].min(1) if n else 0

    def _load_arrays(self, rep: dict, pos: int, full: bool) -> None:
        n = len(rep["actions"])
        order = np.r_[pos:n, 0:pos] if full else np.arange(n)
        cols = {k: np.asarray(rep[k]) for k in FIELDS}
        for j in order:
            self.add(*(cols[k][j] for k in ("obs", "actions", "rewards", "next_obs", "dones")))


def make_replay(capacity: int, obs_shape: tuple[int, ...], frames: bool):
    """``FrameReplay`` for stacked uint8 images (``frames``), else float32 ``ArrayReplay``."""
    if frames:
        return FrameReplay(capacity, obs_shape)
    return ArrayReplay(capacity, obs_shape, np.float32)
