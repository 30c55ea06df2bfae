"""The label space: finding names, cross-feature combinations, multi-hot labels.

Six findings in a fixed order (DESIGN §2). A *finding set* is what one image shows:
one finding (single-feature) or two (cross-feature). Labels are multi-hot vectors
over the findings; on disk a finding set is a folder named by its findings joined
with ``+`` in taxonomy order (``graves+hot_nodule``).

A user's data may use another taxonomy: :func:`Taxonomy.from_folder_names` builds
one from the folder names. Everything else in the package takes a ``Taxonomy``
(default :data:`DEFAULT`), so nothing else hard-codes finding names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

FINDINGS: tuple[str, ...] = (
    "normal",
    "graves",
    "hashimoto",
    "subacute_thyroiditis",
    "hot_nodule",
    "cold_nodule",
)

# Default cross-feature combinations (DESIGN §2).
CROSS_COMBINATIONS: tuple[tuple[str, str], ...] = (
    ("graves", "hot_nodule"),  # Marine-Lenhart syndrome
    ("graves", "cold_nodule"),
    ("hashimoto", "hot_nodule"),
    ("hashimoto", "cold_nodule"),
    ("subacute_thyroiditis", "hot_nodule"),
    ("hot_nodule", "cold_nodule"),  # multinodular goitre
)

SEPARATOR = "+"


class UnknownFindingError(ValueError):
    """A finding name (or folder name) that is not in the taxonomy."""


@dataclasses.dataclass(frozen=True)
class Taxonomy:
    """Findings and the finding sets (labels) that may occur.

    Attributes:
      findings: finding names, in label order; one classifier logit each.
      finding_sets: every finding set that can occur, singles first; the index of a
        set in this tuple is its ``finding_set`` id in data sets and metrics.
    """

    findings: tuple[str, ...] = FINDINGS
    finding_sets: tuple[tuple[str, ...], ...] = tuple((f,) for f in FINDINGS) + CROSS_COMBINATIONS

    def __post_init__(self):
        if len(set(self.findings)) != len(self.findings):
            raise ValueError(f"duplicate finding names in {self.findings}")
        for s in self.finding_sets:
            for f in s:
                if f not in self.findings:
                    raise UnknownFindingError(
                        f"finding set {s!r} names {f!r}, which is not one of {list(self.findings)}"
                    )
        canon = [self.canonical(s) for s in self.finding_sets]
        if len(set(canon)) != len(canon):
            raise ValueError(f"duplicate finding sets in {self.finding_sets}")
        object.__setattr__(self, "finding_sets", tuple(canon))

    # -- sizes -------------------------------------------------------------------
    @property
    def num_findings(self) -> int:
        return len(self.findings)

    @property
    def num_sets(self) -> int:
        return len(self.finding_sets)

    @property
    def single_set_ids(self) -> tuple[int, ...]:
        return tuple(i for i, s in enumerate(self.finding_sets) if len(s) == 1)

    @property
    def cross_set_ids(self) -> tuple[int, ...]:
        return tuple(i for i, s in enumerate(self.finding_sets) if len(s) > 1)

    # -- names -------------------------------------------------------------------
    def canonical(self, names: Iterable[str]) -> tuple[str, ...]:
        """Sorts finding names into taxonomy order; raises on an unknown name."""
        names = tuple(dict.fromkeys(names))
        if not names:
            raise UnknownFindingError("an empty finding set has no name")
        for n in names:
            if n not in self.findings:
                raise UnknownFindingError(f"unknown finding {n!r}; known findings: {', '.join(self.findings)}")
        return tuple(sorted(names, key=self.findings.index))

    def folder_name(self, finding_set: Sequence[str] | int) -> str:
        """``("hot_nodule", "graves")`` or its id -> ``"graves+hot_nodule"``."""
        if isinstance(finding_set, (int, np.integer)):
            finding_set = self.finding_sets[int(finding_set)]
        return SEPARATOR.join(self.canonical(finding_set))

    def parse_folder_name(self, name: str) -> tuple[str, ...]:
        """``"graves+hot_nodule"`` -> ``("graves", "hot_nodule")``.

        Raises UnknownFindingError naming the known folder names when a part is not a
        finding of this taxonomy.
        """
        parts = tuple(p.strip() for p in name.split(SEPARATOR))
        try:
            return self.canonical(parts)
        except UnknownFindingError as e:
            known = ", ".join(self.folder_name(s) for s in self.finding_sets)
            raise UnknownFindingError(f"folder {name!r}: {e}. Known folder names: {known}") from None

    def set_id(self, finding_set: Sequence[str] | str) -> int:
        """Id of a finding set (names or folder name) in :attr:`finding_sets`."""
        if isinstance(finding_set, str):
            finding_set = self.parse_folder_name(finding_set)
        canon = self.canonical(finding_set)
        try:
            return self.finding_sets.index(canon)
        except ValueError:
            known = ", ".join(self.folder_name(s) for s in self.finding_sets)
            raise UnknownFindingError(
                f"finding set {SEPARATOR.join(canon)!r} is not one of this taxonomy's: {known}"
            ) from None

    def is_cross(self, finding_set: Sequence[str] | int) -> bool:
        if isinstance(finding_set, (int, np.integer)):
            finding_set = self.finding_sets[int(finding_set)]
        return len(finding_set) > 1

    # -- multi-hot ---------------------------------------------------------------
    def encode(self, finding_set: Sequence[str] | str) -> np.ndarray:
        """Finding set -> multi-hot float32 ``[num_findings]``."""
        if isinstance(finding_set, str):
            finding_set = self.parse_folder_name(finding_set)
        v = np.zeros(self.num_findings, np.float32)
        for f in self.canonical(finding_set):
            v[self.findings.index(f)] = 1.0
        return v

    def decode(self, multi_hot: Sequence[float]) -> tuple[str, ...]:
        """Multi-hot (0/1) ``[num_findings]`` -> finding names."""
        return tuple(f for f, v in zip(self.findings, np.asarray(multi_hot)) if v > 0.5)

    @property
    def set_table(self) -> np.ndarray:
        """Multi-hot label of every finding set, float32 ``[num_sets, num_findings]``."""
        return np.stack([self.encode(s) for s in self.finding_sets])

    def set_id_of_multi_hot(self, multi_hot: np.ndarray) -> np.ndarray:
        """Finding-set ids ``[...]`` of multi-hot labels ``[..., F]``; -1 where the
        combination is not a finding set of this taxonomy (a wrong prediction can be)."""
        mh = np.asarray(multi_hot) > 0.5
        table = self.set_table > 0.5
        eq = (mh[..., None, :] == table).all(-1)
        return np.where(eq.any(-1), eq.argmax(-1), -1)

    # -- construction ------------------------------------------------------------
    @classmethod
    def from_folder_names(cls, names: Iterable[str]) -> Taxonomy:
        """A taxonomy whose findings are the parts of the given folder names.

        Findings keep the default order where they are default findings, then the
        others alphabetically. Finding sets are the folder names given.
        """
        sets = [tuple(p.strip() for p in n.split(SEPARATOR)) for n in names]
        parts = {p for s in sets for p in s}
        if not parts or "" in parts:
            raise UnknownFindingError(f"empty finding name in folder names {list(names)}")
        order = [f for f in FINDINGS if f in parts] + sorted(parts - set(FINDINGS))
        ordered = [tuple(sorted(s, key=order.index)) for s in sets]
        ordered.sort(key=lambda s: (len(s), [order.index(f) for f in s]))
        return cls(findings=tuple(order), finding_sets=tuple(dict.fromkeys(ordered)))

    def to_dict(self) -> dict:
        return {"findings": list(self.findings), "finding_sets": [list(s) for s in self.finding_sets]}

    @classmethod
    def from_dict(cls, d: dict) -> Taxonomy:
        return cls(tuple(d["findings"]), tuple(tuple(s) for s in d["finding_sets"]))


DEFAULT = Taxonomy()


DECISIONS = ("set", "threshold")


def set_log_likelihood(probs: np.ndarray, taxonomy: Taxonomy = DEFAULT) -> np.ndarray:
    """Joint log-likelihood of every finding set of the taxonomy, ``[..., num_sets]``.

    Under independent per-finding sigmoid probabilities ``p`` ``[..., F]`` the
    probability of the multi-hot label ``y`` of a set is ``prod_f p_f^y_f (1 - p_f)^(1 - y_f)``:

        log L(y) = sum_f y_f log p_f + (1 - y_f) log(1 - p_f)

    ``p`` is clipped to ``[1e-12, 1 - 1e-12]`` (float64) so a saturated sigmoid gives a
    finite, very low likelihood rather than ``-inf`` for every set.
    """
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0 - 1e-12)
    if p.shape[-1] != taxonomy.num_findings:
        raise ValueError(f"{p.shape[-1]} probabilities per image but the taxonomy has {taxonomy.num_findings} findings")
    table = taxonomy.set_table.astype(np.float64)  # [S, F]
    return np.log(p) @ table.T + np.log1p(-p) @ (1.0 - table).T


NORMAL = "normal"


def predict_set_ids(probs: np.ndarray, taxonomy: Taxonomy = DEFAULT) -> np.ndarray:
    """The most probable finding set of the taxonomy per image: ids ``[...]`` (int64).

    Every prediction is a valid finding set. "No finding" (the all-zero label, which
    no set has) means a normal gland: where the taxonomy has the set ``("normal",)``,
    that set scores ``log(L(normal) + L(no finding))``, so an image whose findings all
    look absent is called normal.
    """
    scores = set_log_likelihood(probs, taxonomy)
    if (NORMAL,) in taxonomy.finding_sets:
        p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0 - 1e-12)
        i = taxonomy.finding_sets.index((NORMAL,))
        scores[..., i] = np.logaddexp(scores[..., i], np.log1p(-p).sum(-1))
    return scores.argmax(-1)


def predict(
    probs: np.ndarray, threshold: float = 0.5, *, decision: str = "threshold", taxonomy: Taxonomy = DEFAULT
) -> np.ndarray:
    """Multi-hot prediction ``[..., F]`` (float32 0/1) from per-finding probabilities ``[..., F]``.

    ``decision``:
      ``"set"``: the most probable finding set of ``taxonomy`` (:func:`predict_set_ids`);
        always a combination that can occur.
      ``"threshold"``: the findings with p >= threshold; the argmax finding where none
        reaches it (DESIGN §2), so every image gets at least one finding (the
        combination need not be a finding set of the taxonomy).
    """
    probs = np.asarray(probs)
    if decision == "set":
        return taxonomy.set_table[predict_set_ids(probs, taxonomy)]
    if decision != "threshold":
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    pred = probs >= threshold
    top = np.eye(probs.shape[-1], dtype=bool)[probs.argmax(-1)]
    return np.where(pred.any(-1, keepdims=True), pred, top).astype(np.float32)
