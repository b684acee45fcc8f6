"""The segmentation run config (``mlbseg train CONFIG``): schema, defaults and the method switch.

Defaults are the paper's PROMISE12 settings (docs/reference.md §6.11): SGD lr 0.005, momentum 0.9, weight
decay 5e-4, the 20/(epoch + 20) schedule, gradient clipping at 0.2, train batch 1 (five views), meta batch 2.
The shipped YAML files in ``mlbseg/configs/seg/`` override them; ``--set key.sub=value`` overrides the YAML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from mlbseg.config import absolute_path, check_range, choice
from mlbseg.engine.config import OptimConfig, ScheduleConfig, check_shared_sections
from mlbseg.errors import UserError
from mlbseg.meta import resolve_normalizer_name
from mlbseg.seg.consistency import PAIRINGS
from mlbseg.seg.model import ARCHITECTURES, check_architecture_keys, size_divisor
from mlbseg.seg.multiscale import rescaled_size

# The built-in training labels: the synthetic noisy levels and the clean reference (the upper bound).
NOISE_LEVELS = ("L1", "L2", "L3", "clean")
# A given annotation's name (``noisy_<name>`` in the case files): the manifest lists which exist.
ANNOTATION_NAME = re.compile(r"[A-Za-z0-9_-]+")


# The noisy labels' loss outside meta-weighting: the mean per-pixel cost (BCE or CE), or a robust loss of
# mlbseg.seg.losses (GCE, MAE, noise-robust Dice, T-Loss).
NOISY_LOSSES = ("mean", "gce", "mae", "nr_dice", "tloss")


@dataclass(frozen=True)
class MethodTraits:
    """Which parts of the training step a method uses, and the defaults of its optional parts (§4.1).

    ``consistency_weight`` and ``ema`` are the method's defaults for ``method.consistency_weight`` and
    ``method.ema.enabled`` (what a config's ``null`` means); None says the method has no such term, and
    the config's value is then resolved to off (:meth:`MethodConfig.__post_init__`).
    """

    loss: str = "mean"  # the noisy labels' loss (one of NOISY_LOSSES) when they are not meta-weighted
    meta_weights: bool = False  # α from the meta engine
    pseudo_labels: bool = False  # β and its multi-view pseudo-label
    views: bool = False  # the five views (when method.views.enabled)
    consistency_weight: float | None = None  # default multi-view consistency weight; None: no such term
    ema: bool | None = None  # the EMA teacher on (True) or off (False) by default; None: no teacher
    meta_batch_step: bool = False  # the extra supervised step on the clean meta batch
    # The selection or correction rule of mlbseg.seg.selection (one of SELECTION_RULES), None for none.
    rule: str | None = None
    networks: int = 1  # networks trained together (co-teaching 2, Tri-Net 3, DAST 2)
    # The evaluated model: the first network, or (True) the mean of every network's logits (DAST)
    evaluates_mean: bool = False


# The selection and correction rules (docs/method.md §5.3): several networks that select pixels for each
# other, or one network that corrects its labels (clslsr per batch, adele in its stored label maps), or a
# clean and a noisy branch whose divergence-aware scores rank each sample's label (dast).
SELECTION_RULES = ("coteaching", "trinet", "clslsr", "adele", "dast")

# MLB-Seg's own parts (Wei et al., MICCAI 2023): the views, multi-view consistency (weight 1) and the EMA
# teacher, as promise12_mlbseg.yaml has always set them.
_MLBSEG_PARTS = {"views": True, "consistency_weight": 1.0, "ema": True, "meta_batch_step": True}

# The registry of training methods: ``method.name`` is one of its keys (docs/design.md §4.1).
METHODS: dict[str, MethodTraits] = {
    "baseline": MethodTraits(),  # mean BCE on the noisy labels (the paper's Table 8 baseline)
    "baseline_plus_meta": MethodTraits(meta_batch_step=True),  # + the clean meta batch: the fair control
    # MLB-Seg with uniform weights: the mean cost of the views (no α/β), consistency, EMA, meta-batch
    # step; MLB-Seg minus views_meta is the meta-weighting's own share.
    "views_meta": MethodTraits(**_MLBSEG_PARTS),
    "l2rw": MethodTraits(meta_weights=True, meta_batch_step=True),  # α only (Ren et al., 2018)
    # α/β with the five views, no consistency, no EMA: the L2B paper's segmentation setting (Zhou et al.)
    "l2b_seg": MethodTraits(meta_weights=True, pseudo_labels=True, views=True, meta_batch_step=True),
    "mlbseg": MethodTraits(meta_weights=True, pseudo_labels=True, **_MLBSEG_PARTS),
    "gce": MethodTraits(loss="gce"),  # Zhang & Sabuncu, NeurIPS 2018
    "mae": MethodTraits(loss="mae"),  # Ghosh et al., AAAI 2017
    "nr_dice": MethodTraits(loss="nr_dice"),  # Wang et al., IEEE TMI 2020
    "tloss": MethodTraits(loss="tloss"),  # Gonzalez-Jimenez et al., MICCAI 2023
    "coteaching": MethodTraits(rule="coteaching", networks=2),  # Han et al., NeurIPS 2018
    "trinet": MethodTraits(rule="trinet", networks=3),  # Zhang et al., MICCAI 2020
    "clslsr": MethodTraits(rule="clslsr"),  # Zhang et al., MICCAI 2020 (confident learning + SLSR)
    "adele": MethodTraits(rule="adele"),  # Liu et al., CVPR 2022 (adaptive early-learning correction)
    # Yang et al., IEEE JBHI 2022 (divergence-aware selective training); the meta batch is the clean data
    # of its clean branch (the first network)
    "dast": MethodTraits(rule="dast", networks=2, meta_batch_step=True, evaluates_mean=True),
}


@dataclass(frozen=True)
class DataConfig:
    """Which prepared dataset and which training labels; the dataset-level augmentation."""

    prepared: str = "prepared"  # folder written by `mlbseg prepare`
    # Training labels: L1/L2/L3 (synthetic noise), clean (the reference: the clean-label upper bound) or
    # the name of a given annotation (noisy_<name>, e.g. rater2); checked against the manifest at build.
    noise: str = "L2"
    flip_prob: float = 0.5  # horizontal flip, same for image and masks
    rotation_degrees: float = 10.0  # uniform in ±degrees, same for image and masks
    # Share of each train and meta batch drawn from slices whose label has foreground (nnU-Net-style
    # oversampling; helps short runs where most slices are empty). 0 = uniform, as the paper.
    foreground_fraction: float = 0.0


@dataclass(frozen=True)
class ModelConfig:
    """The network: smp UNet++/U-Net (encoder_depth 4 so 144×144 works) or the reference's NestedUNet."""

    arch: str = choice("unetplusplus", tuple(ARCHITECTURES))
    encoder: str = "resnet34"
    encoder_depth: int = 4
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32)
    encoder_weights: str | None = None  # path to a local encoder state dict; nothing is downloaded
    # Initial foreground probability of the head (bias = logit(p)); None = smp's zero bias (p = 0.5).
    foreground_prior: float | None = None
    # nested_unet only: filter widths per level (None: the published 64, 128, 256, 512, 1024).
    features: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ViewsConfig:
    """MLB-Seg's five views (identity, zoom-in, two zoom-outs, flip) and their pseudo-label."""

    enabled: bool = True
    zoom_pads: tuple[int, ...] = tuple(range(4, 31, 2))  # pixels per side, drawn per sample


@dataclass(frozen=True)
class EMAConfig:
    """Mean-teacher consistency (MLB-Seg's EMA teacher)."""

    enabled: bool | None = None  # None: the method's default (on for mlbseg and views_meta)
    decay: float = 0.99
    noise_std: float = 0.02  # Gaussian noise on the teacher's input
    weight: float = 1.0


@dataclass(frozen=True)
class MethodConfig:
    """The method switch (docs/design.md §4.1), the meta engine's settings and the robust losses' parameters.

    One config serves every method; each part takes effect only with a method that has it
    (:data:`METHODS`). ``consistency_weight: null`` and ``ema.enabled: null`` mean the method's default;
    they are resolved once, when the config is built (:meth:`__post_init__`), so the run's saved
    ``config.yaml`` holds the values that ran: a method without the part gets 0 / false whatever the YAML
    said, a method with it the YAML's value or its default.
    """

    name: str = choice("mlbseg", tuple(METHODS))
    engine: str = choice("forward", ("forward", "lookahead"))  # exact first-order form, or the reference's
    normalize: str = "org"  # see mlbseg.meta: clamp_sum (org), softmax_per_sample, sigmoid_sum, ...
    temperature: float = 1.0
    meta_batch_size: int = 2  # clean meta slices per step and process (five views each when enabled)
    # Multi-view consistency weight; null = the method's default (1 for mlbseg and views_meta), 0 = off.
    consistency_weight: float | None = None
    # Which views of a pair the consistency pulls: both (ours), or one_sided (the published code: the
    # lower-indexed view toward the other, detached; docs/reference.md §7 item 44)
    consistency_pairing: str = choice("both", PAIRINGS)
    warmup_epochs: int = 0  # epochs of plain mean BCE on the noisy labels before meta-weighting starts
    gce_q: float = 0.7  # GCE's q in (0, 1] (the paper's 0.7; q -> 0 is the cross-entropy)
    nr_dice_gamma: float = 1.5  # the noise-robust Dice loss's exponent in [1, 2] (the paper's 1.5)
    tloss_nu: float = 1.0  # the T-Loss's initial degrees of freedom ν > 0 (learnt; the paper's 1)
    # coteaching, trinet: the final forget rate τ (share of each batch's pixels dropped as probably
    # mislabelled; the paper sets it to the noise rate, unknown here: 0.2 as PyMIC's select ratio 0.8)
    forget_rate: float = 0.2
    forget_ramp_epochs: int = 10  # T_k: epochs over which the forget rate ramps from 0 (the paper's 10)
    clslsr_epsilon: float = 0.25  # clslsr: label smoothing ε at the detected label errors (PyMIC's 0.25)
    # adele: a class's turning point is the first epoch where the slope of its fitted training-IoU curve
    # has dropped by this share of the first epoch's (the paper's r = 0.9) ...
    adele_slope_drop: float = 0.9
    # ... after which its labels follow the model's predictions above this probability (the paper's 0.8)
    adele_confidence: float = 0.8
    # adele's multi-scale consistency: the input scales besides 1 (the authors' SegTHOR code's 0.7, 1.5) ...
    adele_scales: tuple[float, ...] = (0.7, 1.5)
    # ... the weight λ of the consistency term, 0 = off (the authors' jsd_lambda default 1) ...
    adele_consistency_weight: float = 1.0
    # ... and the mixture confidence ρ from which a pixel counts (the authors' rho default 0.8)
    adele_consistency_confidence: float = 0.8
    # dast (docs/method.md §5.3; defaults are PyMIC 0.6.2's): the memory of the last samples' noisiness
    # scores that ranks the current ones (PyMIC's 20, batches there) ...
    dast_queue: int = 20
    # ... its top share is severely noisy (consistency instead of labels), its bottom share slightly noisy
    # (supplementary training of the clean branch); PyMIC's select ratio ...
    dast_select_share: float = 0.2
    # ... ξ in the scores' weight exp(−ξ·divergence) (PyMIC's 16) ...
    dast_divergence_scale: float = 16.0
    # ... the weights of the two branches' consistency and of the supplementary training (PyMIC's 0.1
    # each), ramped up with exp(−5(1 − t)²) over dast_ramp_epochs (null: the whole run, as PyMIC) ...
    dast_consistency_weight: float = 0.1
    dast_supplementary_weight: float = 0.1
    dast_ramp_epochs: int | None = None
    # ... and the temperature that sharpens the refined labels (PyMIC's 0.5)
    dast_temperature: float = 0.5
    views: ViewsConfig = field(default_factory=ViewsConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)

    def __post_init__(self) -> None:
        """Resolve ``consistency_weight`` and ``ema.enabled`` for the method (the one place that does)."""
        traits = METHODS[self.name]
        weight = _resolved(self.consistency_weight, traits.consistency_weight, off=0.0)
        object.__setattr__(self, "consistency_weight", weight)
        enabled = _resolved(self.ema.enabled, traits.ema, off=False)
        if enabled is not self.ema.enabled:
            object.__setattr__(self, "ema", replace(self.ema, enabled=enabled))

    @property
    def traits(self) -> MethodTraits:
        """The registry entry of ``name``."""
        return METHODS[self.name]

    @property
    def uses_meta_weights(self) -> bool:
        """α (and β) come from the meta engine: l2rw, l2b_seg and mlbseg."""
        return self.traits.meta_weights

    @property
    def uses_pseudo_labels(self) -> bool:
        """β weights a pseudo-label: l2b_seg and mlbseg."""
        return self.traits.pseudo_labels

    @property
    def uses_views(self) -> bool:
        """The five views (views_meta, l2b_seg, mlbseg); the others train on the augmented slices."""
        return self.traits.views and self.views.enabled

    @property
    def uses_consistency(self) -> bool:
        """Multi-view consistency (needs the views)."""
        return self.uses_views and self.consistency_weight > 0

    @property
    def uses_multiscale_consistency(self) -> bool:
        """ADELE's multi-scale consistency: ``adele`` with ``adele_consistency_weight`` > 0."""
        return self.rule == "adele" and self.adele_consistency_weight > 0

    @property
    def uses_ema(self) -> bool:
        """The EMA teacher (resolved: off for a method without one)."""
        return bool(self.ema.enabled)

    @property
    def trains_on_meta_batch(self) -> bool:
        """The extra supervised step on the clean meta batch (every method but the baseline and losses)."""
        return self.traits.meta_batch_step

    @property
    def rule(self) -> str | None:
        """The selection or correction rule (one of :data:`SELECTION_RULES`), None for none."""
        return self.traits.rule

    @property
    def networks(self) -> int:
        """How many networks the method trains."""
        return self.traits.networks

    @property
    def evaluated_networks(self) -> int:
        """How many networks the evaluated model averages: all for DAST, else 1 (the first)."""
        return self.traits.networks if self.traits.evaluates_mean else 1

    @property
    def noisy_loss(self) -> str:
        """The noisy labels' loss outside meta-weighting (one of :data:`NOISY_LOSSES`)."""
        return self.traits.loss


def _resolved(value: Any, default: Any, *, off: Any) -> Any:
    """A per-method setting: ``off`` for a method without the part (``default`` None), else value or default.

    Example:
        >>> _resolved(None, 1.0, off=0.0), _resolved(0.5, 1.0, off=0.0), _resolved(0.5, None, off=0.0)
        (1.0, 0.5, 0.0)
    """
    if default is None:
        return off
    return default if value is None else value


@dataclass(frozen=True)
class TrainConfig:
    """Loop length, batch size, device and reproducibility."""

    epochs: int = 100
    batch_size: int = 1  # training slices per step and process (each expanded to five views when enabled)
    steps_per_epoch: int | None = None  # None = one pass over the training slices
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16/fp16 autocast for the real steps on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model for the real steps (the meta engine stays eager)
    deterministic: bool = True  # deterministic kernels: resume reproduces an uninterrupted run
    log_every: int = 50  # steps between progress/TensorBoard updates (the only host syncs in a step)
    figures_every: int = 10  # epochs between TensorBoard overlays of fixed validation slices (0: none)
    # The weights in final.pt: the last epoch's (final, the reported number) or those of the epoch with the
    # best val_dice (best_val: needs a val split; never the test cases).
    select: str = choice("final", ("final", "best_val"))


@dataclass(frozen=True)
class SegConfig:
    """A whole segmentation run."""

    name: str = "promise12_mlbseg"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def with_absolute_paths(cfg: SegConfig) -> SegConfig:
    """``cfg`` with ``data.prepared`` and ``model.encoder_weights`` made absolute (docs/design.md §4.2).

    A relative path is taken relative to the working directory, as the user typed it, so the run's saved
    config and checkpoints name the same files from any folder.
    """
    data = replace(cfg.data, prepared=absolute_path(cfg.data.prepared))
    model = replace(cfg.model, encoder_weights=absolute_path(cfg.model.encoder_weights))
    return replace(cfg, data=data, model=model)


def check_config(cfg: SegConfig) -> None:
    """Checks beyond the schema's types (ranges, names, cross-key rules), before anything is read or built.

    Raises:
        UserError: Naming the first key out of range and what it accepts.
    """
    check_shared_sections(cfg)
    data, model, method = cfg.data, cfg.model, cfg.method
    check_range("data.flip_prob", data.flip_prob, 0.0, 1.0)
    check_range("data.rotation_degrees", data.rotation_degrees, 0.0, 180.0)
    check_range("data.foreground_fraction", data.foreground_fraction, 0.0, 1.0)
    check_range("model.encoder_depth", model.encoder_depth, 3, 5)
    check_range("model.foreground_prior", model.foreground_prior, 0.0, 1.0, strict="both")
    check_range("train.figures_every", cfg.train.figures_every, 0)
    check_architecture_keys(model)
    check_range("method.temperature", method.temperature, 0.0, strict="low")
    check_range("method.meta_batch_size", method.meta_batch_size, 1)
    check_range("method.consistency_weight", method.consistency_weight, 0.0)
    check_range("method.warmup_epochs", method.warmup_epochs, 0)
    check_range("method.gce_q", method.gce_q, 0.0, 1.0, strict="low")
    check_range("method.nr_dice_gamma", method.nr_dice_gamma, 1.0, 2.0)
    check_range("method.tloss_nu", method.tloss_nu, 0.0, strict="low")
    check_range("method.forget_rate", method.forget_rate, 0.0, 1.0, strict="high")
    check_range("method.forget_ramp_epochs", method.forget_ramp_epochs, 0)
    check_range("method.clslsr_epsilon", method.clslsr_epsilon, 0.0, 1.0, strict="high")
    check_range("method.adele_slope_drop", method.adele_slope_drop, 0.0, 1.0, strict="both")
    check_range("method.adele_confidence", method.adele_confidence, 0.5, 1.0, strict="high")
    _check_adele_scales(method.adele_scales)
    check_range("method.adele_consistency_weight", method.adele_consistency_weight, 0.0)
    check_range(
        "method.adele_consistency_confidence", method.adele_consistency_confidence, 0.0, 1.0, strict="high"
    )
    check_range("method.dast_queue", method.dast_queue, 1)
    check_range("method.dast_select_share", method.dast_select_share, 0.0, 0.5)
    check_range("method.dast_divergence_scale", method.dast_divergence_scale, 0.0)
    check_range("method.dast_consistency_weight", method.dast_consistency_weight, 0.0)
    check_range("method.dast_supplementary_weight", method.dast_supplementary_weight, 0.0)
    check_range("method.dast_ramp_epochs", method.dast_ramp_epochs, 0)
    check_range("method.dast_temperature", method.dast_temperature, 0.0, 1.0, strict="low")
    check_range("method.ema.decay", method.ema.decay, 0.0, 1.0, strict="high")
    check_range("method.ema.noise_std", method.ema.noise_std, 0.0)
    check_range("method.ema.weight", method.ema.weight, 0.0)
    if not ANNOTATION_NAME.fullmatch(data.noise):
        raise UserError(
            f"'data.noise' must be one of {', '.join(NOISE_LEVELS)} or the name of a given annotation "
            f"(letters, digits, '_' and '-'); got {data.noise!r}"
        )
    for pad in method.views.zoom_pads:
        check_range("method.views.zoom_pads", pad, 1)
    try:
        resolve_normalizer_name(method.normalize, loss="bce")
    except ValueError as err:
        raise UserError(f"method.normalize: {err}") from None


def _check_adele_scales(scales: tuple[float, ...]) -> None:
    """UserError unless ``method.adele_scales`` has at least one scale, each above 0 and other than 1."""
    if not scales:
        raise UserError(
            "method.adele_scales: needs at least one scale besides 1 "
            "(method.adele_consistency_weight=0 turns the multi-scale term off)"
        )
    for scale in scales:
        check_range("method.adele_scales", scale, 0.0, strict="low")
        if scale == 1.0:
            raise UserError(
                f"method.adele_scales: scale 1 is always used, list only the others; got {list(scales)}"
            )


def check_zoom_pads(cfg: SegConfig, size: int) -> None:
    """UserError when the zoom pads of an MLB-Seg config do not fit ``size``×``size`` slices."""
    pads = set(cfg.method.views.zoom_pads)
    if cfg.method.uses_views and (len(pads) < 2 or 2 * max(pads) >= size):
        raise UserError(
            f"method.views.zoom_pads: need at least two distinct pads, each below {size // 2} for "
            f"{size}×{size} slices; got {list(cfg.method.views.zoom_pads)}"
        )


def check_adele_scales_fit(cfg: SegConfig, height: int, width: int) -> None:
    """UserError when an ADELE scale would leave a step of one slice with a 1×1 bottleneck.

    The rescaled sides are rounded to the network's size divisor, at least one
    (:func:`~mlbseg.seg.multiscale.rescaled_size`); at one divisor on both sides the deepest features are
    1×1, and BatchNorm cannot train on one value per channel (``train.batch_size`` 1).
    """
    if not cfg.method.uses_multiscale_consistency or cfg.train.batch_size > 1:
        return
    divisor = size_divisor(cfg.model)
    for scale in cfg.method.adele_scales:
        if rescaled_size(height, scale, divisor) == rescaled_size(width, scale, divisor) == divisor:
            raise UserError(
                f"method.adele_scales: ×{scale:g} makes the {height}×{width} slices {divisor}×{divisor}, "
                "where the network's deepest features are 1×1 and BatchNorm cannot train on one slice; "
                "use train.batch_size 2 or more, larger slices or larger scales"
            )
