"""Temperature sampling across datasets: p_i ∝ n_i^alpha.

alpha = 1 samples in proportion to size (the big dataset dominates), alpha = 0 uniformly across
datasets (a small one is repeated many times); the default 0.5 sits between (as in multilingual
pre-training mixes). Empty datasets get no weight.

Draws are stratified rather than independent: an epoch of `epoch_size` examples holds exactly the
largest-remainder rounding of p_i * epoch_size from dataset i, in a seeded random order. The mix
then matches the target proportions to within one example instead of within multinomial noise,
and the per-dataset counts are known in advance for logging.

Within a dataset, examples are taken along a seeded permutation, reshuffled after each full pass,
and the stream carries on across epochs: a large dataset shows new examples in each epoch, a small
one repeats only after all of it was seen. Everything is a pure function of (seed, epoch,
position), so `MixtureSampler.state_dict()` is enough to resume mid-epoch.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from tunesmith.data.schema import Example
from tunesmith.errors import ConfigError, DataError

DEFAULT_ALPHA = 0.5


def mixture_weights(sizes: Mapping[str, int], alpha: float = DEFAULT_ALPHA) -> dict[str, float]:
    """p_i ∝ n_i^alpha over the datasets with n_i > 0 (the others get 0)."""
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ConfigError(f"mixing alpha must be a finite number >= 0, got {alpha}")
    raw = {name: (float(n) ** alpha if n > 0 else 0.0) for name, n in sizes.items()}
    z = sum(raw.values())
    if z == 0:
        raise DataError("nothing to mix: every dataset is empty")
    return {name: w / z for name, w in raw.items()}


def mixture_counts(sizes: Mapping[str, int], alpha: float = DEFAULT_ALPHA, total: int | None = None) -> dict[str, int]:
    """Examples per dataset in `total` draws: largest-remainder rounding of p_i * total."""
    weights = mixture_weights(sizes, alpha)
    total = sum(sizes.values()) if total is None else total
    if total < 0:
        raise ConfigError(f"the number of mixed examples must be >= 0, got {total}")
    exact = {name: w * total for name, w in weights.items()}
    counts = {name: math.floor(x) for name, x in exact.items()}
    # ties broken by name so the result never depends on dict order
    by_remainder = sorted(weights, key=lambda name: (-(exact[name] - counts[name]), name))
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


class MixtureSampler:
    """An endless, resumable stream of examples mixed by temperature sampling.

    `epoch_size` draws make an epoch (default: the total size of all datasets); `counts` are the
    per-dataset draws in every epoch. Resume with `load_state_dict(state_dict())`.
    """

    def __init__(
        self,
        datasets: Mapping[str, Sequence[Example]],
        alpha: float = DEFAULT_ALPHA,
        epoch_size: int | None = None,
        seed: int = 0,
    ):
        self.datasets = dict(datasets)
        self.sizes = {name: len(ds) for name, ds in self.datasets.items()}
        self.alpha = alpha
        self.epoch_size = sum(self.sizes.values()) if epoch_size is None else epoch_size
        if self.epoch_size <= 0:
            raise ConfigError(f"epoch_size must be > 0, got {self.epoch_size}")
        self.weights = mixture_weights(self.sizes, alpha)
        self.counts = mixture_counts(self.sizes, alpha, self.epoch_size)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._plan: list[tuple[str, int]] | None = None
        self._perms: dict[tuple[str, int], list[int]] = {}

    def _perm(self, name: str, cycle: int) -> list[int]:
        key = (name, cycle)
        if key not in self._perms:
            if len(self._perms) > 4 * len(self.sizes):  # only the current cycles are needed
                self._perms.clear()
            order = list(range(self.sizes[name]))
            random.Random(f"{self.seed}:{name}:{cycle}").shuffle(order)
            self._perms[key] = order
        return self._perms[key]

    def epoch_plan(self, epoch: int) -> list[tuple[str, int]]:
        """(dataset, index) of every draw of `epoch`, in order."""
        names = [name for name in sorted(self.counts) for _ in range(self.counts[name])]
        random.Random(f"{self.seed}:order:{epoch}").shuffle(names)
        taken: Counter[str] = Counter()
        plan = []
        for name in names:
            stream = epoch * self.counts[name] + taken[name]  # position in this dataset's stream
            taken[name] += 1
            n = self.sizes[name]
            plan.append((name, self._perm(name, stream // n)[stream % n]))
        return plan

    def __iter__(self) -> MixtureSampler:
        return self

    def __next__(self) -> Example:
        name, index = self.next_index()
        return self.datasets[name][index]

    def next_index(self) -> tuple[str, int]:
        if self.position >= self.epoch_size:
            self.epoch, self.position, self._plan = self.epoch + 1, 0, None
        if self._plan is None:
            self._plan = self.epoch_plan(self.epoch)
        item = self._plan[self.position]
        self.position += 1
        return item

    def take(self, n: int) -> list[Example]:
        return [next(self) for _ in range(n)]

    def state_dict(self) -> dict[str, Any]:
        # sizes/alpha/epoch_size are kept only to refuse a resume on different data, which would
        # silently change which examples follow
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "alpha": self.alpha,
            "epoch_size": self.epoch_size,
            "sizes": dict(self.sizes),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("alpha", "epoch_size", "sizes"):
            if key in state and state[key] != getattr(self, key):
                raise DataError(
                    f"cannot resume the data mixture: {key} was {state[key]} when saved, now {getattr(self, key)}"
                )
        if not 0 <= int(state["position"]) <= self.epoch_size:
            raise DataError(f"cannot resume the data mixture: position {state['position']} outside the epoch")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._plan, self._perms = None, {}


def mix(
    datasets: Mapping[str, Sequence[Example]],
    alpha: float = DEFAULT_ALPHA,
    total: int | None = None,
    seed: int = 0,
) -> tuple[list[Example], dict[str, int]]:
    """`total` examples (default: all datasets' sizes summed) mixed with p_i ∝ n_i^alpha.

    Returns the examples in their drawn order and the count taken from each dataset.
    """
    if total == 0:
        return [], mixture_counts({name: len(ds) for name, ds in datasets.items()}, alpha, 0)
    sampler = MixtureSampler(datasets, alpha=alpha, epoch_size=total, seed=seed)
    return sampler.take(sampler.epoch_size), dict(sampler.counts)


def subset(items: list, limit: int | None, seed: int) -> list:
    """`limit` items drawn without replacement (seeded), in their original order; all of them when fewer."""
    if limit is None or limit >= len(items):
        return items
    idx = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in idx]
