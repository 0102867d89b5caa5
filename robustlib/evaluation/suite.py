"""The named attack suite: every attack of the pipeline's evaluation, built once from the ``attack`` params.

A ``SuiteAttack`` has a name (its per-example column ``robust_<name>`` and its metrics keys,
``robustlib.evaluation.schema``), its threat model (the L-inf or L2 ball its points are checked against;
``None`` for a perceptual attack, whose set is its own), its group (the threat model over whose attacks
the per-example worst case ``worst_<group>`` is taken: the norm for the ball attacks, Laidlaw et al.'s
threat model for the perceptual ones, where LPA and PPGD share the LPIPS ball, NPTM), its budget (the
settings the params give it) and the implementation it calls, from ``robustlib.attacks``. Calling it runs
``attack(model, x, y)`` with all of that bound.

``attack_suite`` builds the attack stage's suite, in the order the stage runs the attacks and its table
lists them: FGSM, PGD and AutoAttack in the L-inf ball of ``linf_eps``, PGD and AutoAttack in the L2 ball
of ``l2_eps``, the transfer attack (PGD crafted on another run's model, when one is given), then the
perceptual attacks of ``attack.perceptual`` in their order. Each PGD (and the transfer attack) draws its
random starts from its own generator seeded with the base seed; AutoAttack takes the base seed; the
perceptual attacks use the global RNG, which ``evaluate_attacks`` seeds before each attack. The suite
also carries the evaluation's other settings: the examples, batch size and worker processes, the
robustness curves' grids and PGD budget (``CurveSettings``; the curves' own attacks come from
``curve_attacks``) and the sanity checks' settings (``SanitySettings``).

Every attack name of the pipeline is written here and only here: the per-example columns, the metrics
keys, the curve table's attack column, the report's columns and the sanity checks are built from these
constants.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from robustlib.attacks.autoattack import autoattack
from robustlib.attacks.common import Attack, AttackResult
from robustlib.attacks.gradient import fgsm, pgd, transfer
from robustlib.attacks.perceptual.jpeg import jpeg
from robustlib.attacks.perceptual.lpa import lpa, ppgd
from robustlib.attacks.perceptual.recoloradv import recoloradv
from robustlib.attacks.perceptual.stadv import stadv
from robustlib.threat import NORMS, ThreatModel

# --- names --------------------------------------------------------------------------------------------
LINF, L2 = NORMS
"""The ball attacks' groups (threat models): their norms."""
FGSM_LINF, PGD_LINF, AA_LINF = "fgsm_linf", "pgd_linf", "aa_linf"
PGD_L2, AA_L2 = "pgd_l2", "aa_l2"
TRANSFER_LINF = "transfer_linf"
PGD = {LINF: PGD_LINF, L2: PGD_L2}
"""Each norm's PGD attack."""
AUTOATTACK = {LINF: AA_LINF, L2: AA_L2}
"""Each norm's AutoAttack."""

STADV, RECOLORADV, JPEG, LPA, PPGD = "stadv", "recoloradv", "jpeg", "lpa", "ppgd"
NPTM = "nptm"
"""The neural perceptual threat model: the LPIPS ball of LPA and PPGD."""
PERCEPTUAL: dict[str, Callable[..., AttackResult]] = {STADV: stadv, RECOLORADV: recoloradv, JPEG: jpeg, LPA: lpa,
                                                      PPGD: ppgd}
"""The perceptual attacks (the columns of Jin & Rinard's Table 1, as Laidlaw et al. 2021 evaluate them) by
name: the keys of ``attack.perceptual``, whose values are their budgets (``eps``)."""
PERCEPTUAL_GROUP = {STADV: STADV, RECOLORADV: RECOLORADV, JPEG: JPEG, LPA: NPTM, PPGD: NPTM}
"""Each perceptual attack's threat model: LPA and PPGD share the LPIPS ball (NPTM), the others are their own."""
NEEDS_LPIPS = (LPA, PPGD)
"""The attacks that take the fixed LPIPS network (``lpips_net=``, trained by the lpips stage)."""

CURVE_PGD, CURVE_FGSM, CURVE_AUTOATTACK = "pgd", "fgsm", "autoattack"
"""The robustness curves' attacks (the curve table's ``attack`` column) at each eps of a grid."""
CURVE_PGD_NESTED = "pgd_nested"
"""The curves' PGD worst case over the nested balls of the grid (``robustlib.evaluation.curves``)."""


# --- the suite ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SuiteAttack:
    """One named attack (see the module notes); ``attack(model, x, y)`` runs it."""

    name: str
    group: str
    threat: ThreatModel | None
    budget: Mapping[str, Any]
    attack: Callable[..., AttackResult]  # the implementation (e.g. robustlib.attacks.gradient.pgd)
    bound: Attack  # the implementation with the threat, the budget and its objects (generator, models) bound

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        return self.bound(model, x, y)


def _named(name: str, group: str, attack: Callable[..., AttackResult], threat: ThreatModel | None,
           budget: Mapping[str, Any], *args: Any, **objects: Any) -> SuiteAttack:
    """``attack(*args, model, x, y, threat=threat, **budget, **objects)`` as a ``SuiteAttack``."""
    kwargs = {**({"threat": threat} if threat is not None else {}), **budget, **objects}
    return SuiteAttack(name, group, threat, dict(budget), attack, partial(attack, *args, **kwargs))


@dataclass(frozen=True)
class CurveSettings:
    """The robustness curves (``robustlib.evaluation.curves.robustness_curves``): on the first ``n``
    attacked examples, PGD (``steps`` x ``restarts``) and FGSM at each eps of each norm's grid."""

    n: int
    eps_grids: Mapping[str, Sequence[float]]
    steps: int
    restarts: int
    seed: int
    batch_size: int


@dataclass(frozen=True)
class SanitySettings:
    """The attack stage's sanity checks (``robustlib.evaluation.checks.evaluation_sanity_checks``), from
    ``attack.sanity``: the examples the attacks are re-run on, the very large eps of each norm, the
    budget check's tolerance, the undefended run with its limits (its robust accuracy under PGD, and
    the positive controls: its accuracy under each named perceptual attack)."""

    n: int
    large_eps: Mapping[str, float]
    budget_tol: float
    undefended_run: str | None = None
    undefended_max_acc: float | None = None
    perceptual_max_acc: Mapping[str, float] | None = None

    @classmethod
    def from_params(cls, sanity: Mapping[str, Any]) -> SanitySettings:
        max_acc = sanity.get("undefended_max_acc")
        return cls(int(sanity["n"]), {norm: float(sanity["large_eps"][norm]) for norm in NORMS},
                   float(sanity["budget_tol"]), sanity.get("undefended_run"),
                   None if max_acc is None else float(max_acc),
                   {k: float(v) for k, v in (sanity.get("perceptual_max_acc") or {}).items()})


@dataclass(frozen=True)
class AttackSuite:
    """The named attacks (in evaluation order) and the evaluation's settings (module notes)."""

    attacks: tuple[SuiteAttack, ...]
    seed: int
    n_test: int
    batch_size: int
    processes: int  # worker processes on CPU (robustlib.pipeline.parallel); one on an accelerator
    curve: CurveSettings
    sanity: SanitySettings

    def __iter__(self) -> Iterator[SuiteAttack]:
        return iter(self.attacks)

    def __contains__(self, name: object) -> bool:
        return any(a.name == name for a in self.attacks)

    def __getitem__(self, name: str) -> SuiteAttack:
        for a in self.attacks:
            if a.name == name:
                return a
        raise KeyError(f"no attack {name!r} in the suite; it has {self.names}")

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attacks]

    def callables(self) -> dict[str, SuiteAttack]:
        """Name -> attack, in evaluation order (``evaluate_attacks``' ``attacks``)."""
        return {a.name: a for a in self.attacks}

    def threats(self) -> dict[str, ThreatModel]:
        """Name -> threat model of the ball attacks (their points are checked to lie in it)."""
        return {a.name: a.threat for a in self.attacks if a.threat is not None}

    def groups(self) -> dict[str, str]:
        """Name -> group (the threat model of its per-example worst case)."""
        return {a.name: a.group for a in self.attacks}

    def threat(self, norm: str) -> ThreatModel:
        """The standard ball of ``norm`` (``linf_eps``, ``l2_eps``): PGD's and AutoAttack's."""
        return self[PGD[norm]].threat

    def perceptual_budgets(self) -> dict[str, float]:
        """Each perceptual attack's budget (``attack.perceptual``)."""
        return {a.name: a.budget["eps"] for a in self.attacks if a.name in PERCEPTUAL}

    def processes_on(self, device: torch.device) -> int:
        return self.processes if torch.device(device).type == "cpu" else 1


def autoattack_in(attack_params: Mapping[str, Any], seed: int, threat: ThreatModel) -> SuiteAttack:
    """AutoAttack in ``threat`` with the params' settings (``autoattack_version``, ``batch_size``,
    ``square_escalation``, ``square_queries``; the seed): ``aa_linf`` or ``aa_l2``. The attack stage's at
    the standard eps; the verify stage's at each of its eps. Reads no other params."""
    budget = {"version": attack_params["autoattack_version"], "seed": int(seed),
              "batch_size": int(attack_params["batch_size"]),
              "square_escalation": int(attack_params["square_escalation"]),
              "square_queries": int(attack_params["square_queries"])}
    return _named(AUTOATTACK[threat.norm], threat.norm, autoattack, threat, budget)


def perceptual_attacks(budgets: Mapping[str, Any], lpips_net: nn.Module | None = None) -> list[SuiteAttack]:
    """The perceptual attacks named in ``budgets`` (name -> eps, ``attack.perceptual``), in its order; the
    NPTM attacks with the fixed LPIPS network (without one they raise ``NotApplicable``)."""
    out = []
    for name, eps in budgets.items():
        if name not in PERCEPTUAL:
            raise ValueError(f"attack.perceptual: unknown attack {name!r}; known: {sorted(PERCEPTUAL)}")
        objects = {"lpips_net": lpips_net} if name in NEEDS_LPIPS else {}
        out.append(_named(name, PERCEPTUAL_GROUP[name], PERCEPTUAL[name], None, {"eps": float(eps)}, **objects))
    return out


def needs_lpips(attack_params: Mapping[str, Any]) -> bool:
    """Whether ``attack.perceptual`` names an attack that needs the LPIPS network."""
    return any(name in NEEDS_LPIPS for name in (attack_params.get("perceptual") or {}))


def transfer_source(attack_params: Mapping[str, Any], run: str) -> str | None:
    """The run whose model the transfer attack on ``run`` crafts its points on (``attack.transfer_from``);
    None for that run itself or when none is set."""
    source = attack_params.get("transfer_from")
    return source if source and source != run else None


def attack_suite(attack_params: Mapping[str, Any], seed: int, device: torch.device | str = "cpu", *,
                 transfer_source: nn.Module | None = None, lpips_net: nn.Module | None = None) -> AttackSuite:
    """The attack stage's suite from the ``attack`` params (module notes). ``device``: where the PGD
    generators draw (the attacked examples' device); ``transfer_source``: the model the transfer attack
    crafts on (``transfer_linf`` only with one); ``lpips_net``: the NPTM attacks' LPIPS network."""
    ap, seed = attack_params, int(seed)
    linf, l2 = ThreatModel(LINF, float(ap["linf_eps"])), ThreatModel(L2, float(ap["l2_eps"]))
    steps, restarts, batch_size = int(ap["pgd_steps"]), int(ap["pgd_restarts"]), int(ap["batch_size"])
    budget = {"steps": steps, "restarts": restarts, "batch_size": batch_size}

    def generator() -> torch.Generator:  # each PGD its own, seeded with the base seed
        return torch.Generator(device=device).manual_seed(seed)

    attacks = [_named(FGSM_LINF, LINF, fgsm, linf, {}),
               _named(PGD_LINF, LINF, pgd, linf, budget, generator=generator()),
               autoattack_in(ap, seed, linf),
               _named(PGD_L2, L2, pgd, l2, budget, generator=generator()),
               autoattack_in(ap, seed, l2)]
    if transfer_source is not None:
        attacks.append(_named(TRANSFER_LINF, LINF, transfer, linf, budget, transfer_source, generator=generator()))
    attacks += perceptual_attacks(ap.get("perceptual") or {}, lpips_net)
    curve = CurveSettings(int(ap["curve_n"]), {norm: ap[f"curve_{norm}_eps"] for norm in NORMS}, steps, restarts,
                          seed, batch_size)
    return AttackSuite(tuple(attacks), seed, int(ap["n_test"]), batch_size, int(ap["processes"]), curve,
                       SanitySettings.from_params(ap["sanity"]))


def curve_attacks(threat: ThreatModel, steps: int, restarts: int, seed: int = 0, batch_size: int = 1000,
                  device: torch.device | str = "cpu", with_fgsm: bool = True,
                  autoattack_version: str | None = None) -> dict[str, SuiteAttack]:
    """The attacks of one point (``threat``) of a robustness curve, by curve name: PGD (``steps`` x
    ``restarts``, a fresh generator seeded with ``seed``), FGSM (``with_fgsm``) and AutoAttack (given
    its version)."""
    attacks = [_named(CURVE_PGD, threat.norm, pgd, threat,
                      {"steps": steps, "restarts": restarts, "batch_size": batch_size},
                      generator=torch.Generator(device=device).manual_seed(seed))]
    if with_fgsm:
        attacks.append(_named(CURVE_FGSM, threat.norm, fgsm, threat, {}))
    if autoattack_version is not None:
        attacks.append(_named(CURVE_AUTOATTACK, threat.norm, autoattack, threat,
                              {"version": autoattack_version, "seed": seed}))
    return {a.name: a for a in attacks}
