"""``PLOTConfig``: ``transformers.TrainingArguments`` plus every knob of PLOT."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NoReturn

from transformers import TrainingArguments

from .losses import LOSSES, build_loss
from .moo.solvers import SOLVERS, Solver, build_solver

PLAIN_FRAMEWORK_KEYS = ("moo_until_epoch", "sam_rho", "vc_weight")
"""The keys that ``moo_framework: plain`` sets itself (see :func:`check_plain_framework`)."""

ANCHORS = ("class_prior", "uniform")
GRADIENT_METHODS = ("auto", "loop", "batched", "sketch", "per_sample_split")
MOO_LOSSES = ("first_label", "mixup")
SCHEDULE_TIMINGS = ("epoch_end", "epoch_start")


def _fail(key: str, value: object, expected: str) -> NoReturn:
    """Raise the ``ValueError`` of a bad config value: the key, the value and what is allowed."""
    raise ValueError(f"`{key}`={value!r} is invalid: {expected}.")


@dataclass
class PLOTConfig(TrainingArguments):
    r"""
    Configuration for [`PLOTTrainer`]: the Trainer's arguments plus those of PLOT (Zhou et al., ICLR 2024).

    Only the parameters specific to PLOT are listed here; see [`~transformers.TrainingArguments`] for the rest.
    Defaults follow the released CIFAR configs of the reference code (`zzpustc/PLOT`).

    Parameters:
        > Parameters that control when PLOT runs

        moo_until_epoch (`float`, *optional*, defaults to `30.0`):
            The epoch E at which multi-objective training stops: epochs `< E` use the PLOT step, later epochs the
            plain step of the baseline. `0` switches PLOT off (the step is then exactly `Trainer`'s). The reference
            configs use 30 (CIFAR-100) and 80 / 50 / 20 (CIFAR-10 at imbalance 200 / 100 / 50); the reference's key
            for it, `pareto_start_epoch`, is where MOO *ends*.

        > Parameters that control the multi-objective solver

        moo_solver (`str`, *optional*, defaults to `"cagrad"`):
            Name in `plot_hf.moo.SOLVERS` of the solver that turns the Gramian of the class gradients into class
            coefficients: `"cagrad"`, `"mgda"`, `"epo"`, or one added with `plot_hf.moo.register_solver`.
        moo_solver_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Hyperparameters of the solver, the keyword arguments of its class (e.g. `{"eps": 1e-3}` for
            `plot_hf.moo.solvers.EPO`); checked when the config is built.
        cagrad_alpha (`float`, *optional*, defaults to `0.5`):
            CAGrad's conflict-aversion radius `c = alpha * ||g0||` (its `alpha`; used when `moo_solver` is `"cagrad"`).
        cagrad_rescale (`int`, *optional*, defaults to `1`):
            CAGrad's rescaling of the direction: 0 none, 1 `/(1 + alpha^2)` (reference), 2 `/(1 + alpha)`.
        moo_anchor (`str`, *optional*, defaults to `"class_prior"`):
            Preference over the classes present: `"class_prior"` uses `b_k ∝ log(n_max / n_k + 0.01) / 2` (tail
            classes weigh more, the reference's `cls_pre`), `"uniform"` uses `1 / K`. CAGrad's anchor and start
            point; EPO's preference vector.
        moo_modules (`list[str]` or `None`, *optional*, defaults to `None`):
            Module names (glob patterns, relative to the backbone) whose parameters are the shared representation
            updated with the conflict-averse direction. `None` picks the last stage of the backbone (`layer3` of
            the CIFAR ResNet-32, `layer4` of a ResNet-50, the last `stages.N` of timm's stage-based models).
        moo_gradient_method (`str`, *optional*, defaults to `"auto"`):
            How per-class gradients are computed. `"auto"` picks an exact method from the model:
            `"per_sample_split"` when no batch norm runs in or after the MOO stage (e.g. `resnet32_cifar_gn`),
            else `"batched"` on an accelerator and `"loop"` on a CPU.
            `"loop"` (one `autograd.grad` per class) or `"batched"` (batched vector-Jacobian products in chunks
            of `moo_chunk_size` classes, or as many as `moo_chunk_memory_mb` allows), both exact; `"per_sample_split"`
            (exact from ONE backward: per-sample gradients of the stage's modules summed by class; only for models
            without cross-sample coupling in or after the MOO stage, e.g. `resnet32_cifar_gn`: train-mode batch
            norm there is an error naming the module); `"sketch"` (the Gramian estimated from `moo_sketch_dim`
            forward-mode JVPs along random directions, `G V V^T G^T / d`, unbiased, correct under batch norm;
            the direction `G^T lambda` is still applied exactly). Measured costs: `benchmarks/README.md`.
        moo_chunk_size (`int` or `None`, *optional*, defaults to `None`):
            Classes per batched vector-Jacobian call (`"batched"`), or directions per vectorised JVP call
            (`"sketch"`), or samples per vectorised per-sample call of the normalisation and other layers that
            `"per_sample_split"` differentiates per sample (its linear and convolution layers form each class's
            gradient directly and are not chunked); bounds their memory.
            `None`: all at once (or as `moo_chunk_memory_mb` says).
        moo_chunk_memory_mb (`float` or `None`, *optional*, defaults to `None`):
            Memory bound (MiB) of one batched vector-Jacobian call (`"batched"`): each step, the chunk is the
            largest number of classes `c` with `c * (A + P * s)` within it, `A` the bytes that the forward from
            the MOO stage saved for backward (measured during that forward), `P * s` the bytes of one class's
            gradient row (`plot_hf.moo.chunking`); at least one class. An estimate from above of the call's
            extra memory, portable across models and batch sizes, unlike a class count. Exclusive with
            `moo_chunk_size`. Set one of the two for large backbones on accelerators (where `"auto"` picks
            `"batched"`): with neither, all classes present go in one call (ResNeXt-50's `layer4` at batch 256
            saves 1.8 GiB a class).
        moo_sketch_dim (`int`, *optional*, defaults to `64`):
            Number `d` of random directions of `"sketch"` (cost ~ d forward passes of the MOO stage, whatever
            the number of classes; relative error of the Gramian ~ 1 / sqrt(d)).
        moo_solve_every (`int`, *optional*, defaults to `1`):
            Amortised solving: solve for the coefficients every `k` steps; in between, each class present reuses
            its last coefficient (1.0 if never solved for) and the direction `G^T lambda` comes from one backward
            of `sum_k lambda_k L_k` (no per-class gradients). `1`: solve at every step.
        moo_class_groups (`int` or `None`, *optional*, defaults to `None`):
            Class groups as objectives: the classes, ordered by training count, are cut into this many bins
            (head to tail) and each bin present is one objective (the sum of its classes' objectives; its anchor
            the mean of its classes'). `None`: one objective per class.

        moo_ddp_reduce (`str`, *optional*, defaults to `"gradients"`):
            Under DDP, how the per-class statistics of the global batch are reduced across ranks (see
            `plot_hf.distributed`): `"gradients"` sums the K x P per-class gradients (exact: the same step as one
            process on the concatenated batch; K * P floats per step), `"gramian"` sums only the K x K local
            Gramians (cheap; drops the cross-rank terms, so the coefficients are approximate). Ignored on one process.
        sync_batch_norm (`bool`, *optional*, defaults to `False`):
            Convert batch norm to `torch.nn.SyncBatchNorm` when training on several processes (CUDA), so that
            train-mode batch statistics are those of the global batch.

        > Parameters that control SAM and the variability-collapse loss

        sam_rho (`float`, *optional*, defaults to `1e-4`):
            Radius of the SAM perturbation of the MOO parameters (`rho * g / ||g||`). `0` disables SAM.
        sam_keep_fraction (`float`, *optional*, defaults to `0.0`):
            Fraction `r` of the perturbation kept after the step, `theta = theta + r * eps` before the optimizer
            step (the reference's `perturb_radius`: 0.5 for CIFAR-10 at imbalance 200, 1.0 at 100 and 50, 0.0 for
            CIFAR-100); plain SAM restores fully (0).
        vc_weight (`float`, *optional*, defaults to `0.02`):
            Weight of the variability-collapse loss (mean over classes of the std of their per-sample losses).

        > Parameters of the baseline

        class_counts (`list[int]` or `None`, *optional*, defaults to `None`):
            Training-set count per class (for the class-prior anchor and class-aware losses). `None`: counted from
            the train dataset's `labels` column.
        mixup_alpha (`float`, *optional*, defaults to `0.0`):
            Mixup's Beta(alpha, alpha) parameter; `0` disables mixup (the reference's cRT+Mixup baseline uses 1.0).
            With mixup, classes are grouped by the first label of each mixed pair, as in the reference code.
        moo_loss (`str`, *optional*, defaults to `"first_label"`):
            The per-sample loss at the perturbed point of the PLOT step when mixup is on (without mixup both
            values are the same step). The clean forward always uses the mixup loss: its batch mean gives the SAM
            direction, and every step after E is the plain mixup step. `"first_label"` (the reference code):
            at the perturbed point, on the same mixed inputs, the baseline's loss on the FIRST label of each
            mixed pair, `l_i = loss(z_i, y_a,i)`; it forms the per-class objectives, the variability-collapse
            term and the total whose backward gives the non-MOO parameters' gradients. `"mixup"`: the mixup
            loss `lam * loss(z_i, y_a,i) + (1 - lam) * loss(z_i, y_b,i)` for all of them too (a departure from
            the reference: the MOO stage's direction moves far from the reference's, see `docs/fidelity.md`).
        loss_type (`str`, *optional*, defaults to `"ce"`):
            The baseline's per-sample loss, a name of `plot_hf.losses.LOSSES` (`"ce"`, `"ldam"`,
            `"balanced_softmax"`, ...); checked when the config is built.
        loss_kwargs (`dict` or `None`, *optional*, defaults to `None`):
            Keyword arguments of the loss (e.g. `{"drw_epoch": 160}`); a keyword the loss does not accept is an
            error when the config is built.

        moo_framework (`str`, *optional*, defaults to `"plot"`):
            `"plot"`: the solver inside PLOT's framework (temporal schedule E, SAM, variability collapse).
            `"plain"`: the solver the plain multi-task way, the left number of each pair in the seed table
            (METHOD.md): sets `moo_until_epoch = num_train_epochs`, `sam_rho = 0`, `vc_weight = 0` (unless
            `moo_until_epoch` is 0, which keeps PLOT off). Setting one of those three to a value that
            contradicts it (e.g. `sam_rho: 0.05`) is an error naming both keys; see `check_plain_framework`.
        train_sampler (`str`, *optional*, defaults to `"random"`):
            `"random"`, `"class_balanced"` (cRT's class-aware sampling) or `"square_root"`; see
            `plot_hf.baselines.sampling`. The epoch length stays the dataset size.
        resample_from_epoch (`float`, *optional*, defaults to `0.0`):
            Epoch from which `train_sampler` applies; random sampling before (deferred re-sampling, Cao et
            al. 2019; M2m's over-sampling starts at its generation epoch).
        m2m (`dict` or `None`, *optional*, defaults to `None`):
            M2m over-sampling (Kim et al., CVPR 2020): fields of `plot_hf.m2m.M2mConfig`; used by `M2mTrainer`.

        > Parameters of the learning-rate schedule

        lr_milestones (`list[float]` or `None`, *optional*, defaults to `None`):
            Epochs at which the learning rate is multiplied by `lr_decay`. When set, the reference schedule is used
            instead of `lr_scheduler_type`: linear warm-up over `lr_warmup_epochs` epochs from a third of the rate
            (as the reference's `WarmupMultiStepLR`), then step decay; it changes once per epoch.
        lr_warmup_epochs (`float`, *optional*, defaults to `5.0`):
            Warm-up length of the reference schedule.
        lr_decay (`float`, *optional*, defaults to `0.1`):
            Multiplicative decay at each milestone.
        lr_schedule_timing (`str`, *optional*, defaults to `"epoch_end"`):
            When the reference schedule's epoch counter advances. `"epoch_end"` (PyTorch's convention: the
            scheduler steps after each epoch): epoch `e` (0-based) trains with the factor `f(e)`, so warm-up
            starts at a third of the rate. `"epoch_start"` (the reference code, which steps its
            `WarmupMultiStepLR` before each epoch): epoch `e` trains with `f(e + 1)`: 0.467, 0.6, 0.733, 0.867
            in epochs 0-3, 1.0 from epoch 4, and each milestone `m` applies from epoch `m - 1` (159 and 179 for
            milestones 160 and 180).

        > Optimizer

        train_drop_last (`bool`, *optional*, defaults to `False`):
            Drop the last, smaller batch of each training epoch, as the reference's stage-1 loader does. Unlike
            `dataloader_drop_last`, which `Trainer` applies to the evaluation and test loaders too (leaving test
            images out of the metrics), this touches the training loader only.
        weight_decay_all_parameters (`bool`, *optional*, defaults to `False`):
            Apply `weight_decay` to every parameter, biases and normalisation weights included, as the
            reference's single `torch.optim.SGD` does. `False`: `Trainer`'s rule (no decay on biases and
            LayerNorm weights).

        > Reliability and analysis

        max_consecutive_bad_steps (`int`, *optional*, defaults to `5`):
            An optimizer step whose loss or gradients are NaN/inf is skipped (parameters and optimizer state
            untouched) and counted (`plot/skipped_steps`); after this many in a row training stops with
            `plot_hf.guard.NonFiniteTrainingError`. `0`: never stop.
        analysis_every_steps (`int`, *optional*, defaults to `0`):
            Every this many optimizer steps, log the gradient-conflict, preference and representation measures
            of `plot_hf.analysis` on `analysis_num_batches` fixed training batches (`analysis/*` keys). `0`: off.
        analysis_num_batches (`int`, *optional*, defaults to `2`):
            Training batches (fixed, drawn once) those periodic measures average over.

        > Hub

        hub_allow_offline (`bool`, *optional*, defaults to `False`):
            With `push_to_hub` and no access to the Hub, train anyway and skip the upload (a warning says so),
            instead of failing before training.

    Defaults that differ from [`~transformers.TrainingArguments`]: `remove_unused_columns=False` (images are
    transformed lazily), `ddp_find_unused_parameters=False`.
    """

    moo_until_epoch: float = field(default=30.0, metadata={"help": "Epoch E at which MOO stops; 0 disables PLOT."})
    moo_solver: str = field(  # a str, not a Literal: solvers registered later are valid choices
        default="cagrad", metadata={"help": f"MOO solver, a name of plot_hf.moo.SOLVERS ({', '.join(SOLVERS)})."}
    )
    moo_solver_kwargs: dict | None = field(
        default=None, metadata={"help": "Hyperparameters of the solver (keyword arguments of its class)."}
    )
    cagrad_alpha: float = field(default=0.5, metadata={"help": "CAGrad's alpha (c = alpha * ||g0||)."})
    cagrad_rescale: int = field(default=1, metadata={"help": "CAGrad rescale: 0 none, 1 /(1+a^2), 2 /(1+a)."})
    moo_anchor: Literal["class_prior", "uniform"] = field(
        default="class_prior", metadata={"help": "Preference over classes.", "choices": list(ANCHORS)}
    )
    moo_modules: list[str] | None = field(
        default=None, metadata={"help": "Module-name patterns of the MOO parameters; default: last stage."}
    )
    moo_gradient_method: Literal["auto", "loop", "batched", "sketch", "per_sample_split"] = field(
        default="auto", metadata={"help": "Per-class gradient method.", "choices": list(GRADIENT_METHODS)}
    )
    moo_chunk_size: int | None = field(default=None, metadata={"help": "Classes per batched VJP call."})
    moo_chunk_memory_mb: float | None = field(
        default=None, metadata={"help": "Memory bound (MiB) of one batched VJP call; sizes its chunk of classes."}
    )
    moo_sketch_dim: int = field(default=64, metadata={"help": "Random directions of the Gramian sketch."})
    moo_solve_every: int = field(default=1, metadata={"help": "Solve every k steps; reuse coefficients between."})
    moo_class_groups: int | None = field(
        default=None, metadata={"help": "Frequency-ordered class bins as objectives; None: one per class."}
    )
    moo_ddp_reduce: Literal["gradients", "gramian"] = field(
        default="gradients", metadata={"help": "DDP reduction: exact per-class gradients, or local Gramians."}
    )
    sync_batch_norm: bool = field(default=False, metadata={"help": "SyncBatchNorm on several processes."})
    sam_rho: float = field(default=1e-4, metadata={"help": "SAM radius; 0 disables SAM."})
    sam_keep_fraction: float = field(default=0.0, metadata={"help": "Fraction of the SAM perturbation kept."})
    vc_weight: float = field(default=0.02, metadata={"help": "Weight of the variability-collapse loss."})
    class_counts: list[int] | None = field(default=None, metadata={"help": "Training count per class."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup Beta parameter; 0 disables mixup."})
    moo_loss: Literal["first_label", "mixup"] = field(
        default="first_label",
        metadata={"help": "Loss at the perturbed point under mixup: first label (reference) or mixup.",
                  "choices": list(MOO_LOSSES)},
    )
    loss_type: str = field(default="ce", metadata={"help": "Baseline per-sample loss name."})
    loss_kwargs: dict | None = field(default=None, metadata={"help": "Keyword arguments of the loss."})
    moo_framework: Literal["plot", "plain"] = field(
        default="plot", metadata={"help": "plot: E, SAM, VC; plain: every class an objective at every step."}
    )
    train_sampler: Literal["random", "class_balanced", "square_root"] = field(
        default="random", metadata={"help": "Training sampler (plot_hf.baselines.sampling)."}
    )
    resample_from_epoch: float = field(
        default=0.0, metadata={"help": "Epoch from which `train_sampler` applies (random before)."}
    )
    m2m: dict | None = field(default=None, metadata={"help": "M2m over-sampling (plot_hf.m2m.M2mConfig)."})
    lr_milestones: list[float] | None = field(default=None, metadata={"help": "Epochs of x lr_decay steps."})
    lr_warmup_epochs: float = field(default=5.0, metadata={"help": "Warm-up epochs of the reference schedule."})
    lr_decay: float = field(default=0.1, metadata={"help": "Decay factor at each milestone."})
    lr_schedule_timing: Literal["epoch_end", "epoch_start"] = field(
        default="epoch_end",
        metadata={"help": "Epoch e trains with f(e) (epoch_end) or f(e + 1) (epoch_start, reference).",
                  "choices": list(SCHEDULE_TIMINGS)},
    )
    train_drop_last: bool = field(
        default=False, metadata={"help": "Drop the last, smaller training batch of each epoch (reference)."}
    )
    weight_decay_all_parameters: bool = field(
        default=False, metadata={"help": "Weight decay on every parameter (reference), not Trainer's subset."}
    )

    max_consecutive_bad_steps: int = field(
        default=5, metadata={"help": "Stop after this many NaN/inf optimizer steps in a row; 0 never stops."}
    )
    analysis_every_steps: int = field(default=0, metadata={"help": "Log analysis measures every N steps; 0 off."})
    analysis_num_batches: int = field(default=2, metadata={"help": "Fixed batches of the periodic analysis."})

    hub_allow_offline: bool = field(
        default=False, metadata={"help": "With push_to_hub and no Hub access: train anyway, skip the upload."}
    )

    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep columns for lazy transforms."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={"help": "DDP unused-parameter search."})

    def __post_init__(self) -> None:
        if self.moo_framework == "plain":
            check_plain_framework(self._changed_from_defaults(PLAIN_FRAMEWORK_KEYS), float(self.num_train_epochs))
        if self.moo_framework == "plain" and self.moo_until_epoch > 0:
            # The plain multi-task way (the seed table's left number of each pair): every class an objective
            # at every step of training, no SAM, no variability collapse, no early stop.
            self.moo_until_epoch = max(float(self.num_train_epochs), 1e-9)
            self.sam_rho, self.vc_weight = 0.0, 0.0
        self._validate_plot_arguments()
        self._validate_registered_choices()
        super().__post_init__()

    def _validate_plot_arguments(self) -> None:
        """Check PLOT's fields against their allowed values, section by section in a fixed order; the first
        bad one raises ``ValueError`` naming the key, the value and what is allowed."""
        if not (self.moo_until_epoch >= 0 and not math.isnan(self.moo_until_epoch)):
            _fail("moo_until_epoch", self.moo_until_epoch, "it must be >= 0 (0 switches PLOT off)")
        self._check_solver_keys()
        self._check_step_keys()
        self._check_training_keys()
        self._check_gramian_cost_keys()
        self._check_schedule_keys()
        self._check_monitoring_keys()

    def _check_solver_keys(self) -> None:
        """`moo_solver` is registered, `moo_solver_kwargs` a dict, and the solver builds from its hyperparameters
        (a bad one is reported under the config key that set it)."""
        if self.moo_solver not in SOLVERS:
            _fail("moo_solver", self.moo_solver, f"choose one of {SOLVERS.names()}")
        if self.moo_solver_kwargs is not None and not isinstance(self.moo_solver_kwargs, dict):
            _fail("moo_solver_kwargs", self.moo_solver_kwargs, "give a dict of the solver's hyperparameters, or None")
        try:
            self.build_solver()
        except ValueError as error:  # name the config key that set the bad hyperparameter
            keys = {**SOLVERS[self.moo_solver].config_keys, **dict.fromkeys(self.moo_solver_kwargs or {}, "moo_solver_kwargs")}
            key = next((k for name, k in keys.items() if f"`{name}`" in str(error)), "moo_solver_kwargs")
            _fail(key, getattr(self, key), f"solver `{self.moo_solver}` says: {str(error).rstrip('.')}")

    def _check_step_keys(self) -> None:
        """The keys of the PLOT step: anchor, gradient method, cross-rank reduction, SAM, variability collapse,
        framework."""
        if self.moo_anchor not in ANCHORS:
            _fail("moo_anchor", self.moo_anchor, f"choose one of {ANCHORS}")
        if self.moo_gradient_method not in GRADIENT_METHODS:
            _fail("moo_gradient_method", self.moo_gradient_method, f"choose one of {GRADIENT_METHODS}")
        if self.moo_ddp_reduce not in ("gradients", "gramian"):
            _fail("moo_ddp_reduce", self.moo_ddp_reduce, "choose 'gradients' (exact) or 'gramian' (cheap)")
        if self.sam_rho < 0:
            _fail("sam_rho", self.sam_rho, "it must be >= 0")
        if not 0.0 <= self.sam_keep_fraction <= 1.0:
            _fail("sam_keep_fraction", self.sam_keep_fraction, "it must lie in [0, 1]")
        if self.vc_weight < 0:
            _fail("vc_weight", self.vc_weight, "it must be >= 0")
        if self.moo_framework not in ("plot", "plain"):
            _fail("moo_framework", self.moo_framework, "choose 'plot' or 'plain'")

    def _check_training_keys(self) -> None:
        """Sampling, mixup, the MOO loss and the fidelity switches of the training loop."""
        if self.train_sampler not in ("random", "class_balanced", "square_root"):
            _fail("train_sampler", self.train_sampler, "choose 'random', 'class_balanced' or 'square_root'")
        if not self.resample_from_epoch >= 0:
            _fail("resample_from_epoch", self.resample_from_epoch, "it must be >= 0")
        if self.mixup_alpha < 0:
            _fail("mixup_alpha", self.mixup_alpha, "it must be >= 0 (0 disables mixup)")
        if self.moo_loss not in MOO_LOSSES:
            _fail("moo_loss", self.moo_loss, f"choose one of {MOO_LOSSES}")
        if self.lr_schedule_timing not in SCHEDULE_TIMINGS:
            _fail("lr_schedule_timing", self.lr_schedule_timing, f"choose one of {SCHEDULE_TIMINGS}")
        for key in ("weight_decay_all_parameters", "train_drop_last"):
            if not isinstance(getattr(self, key), bool):
                _fail(key, getattr(self, key), "it must be true or false")

    def _check_gramian_cost_keys(self) -> None:
        """The keys that bound the cost of the per-class gradients and of the solve: chunking, sketch, amortised
        solving, class groups, the MOO modules."""
        if self.moo_chunk_size is not None and self.moo_chunk_size < 1:
            _fail("moo_chunk_size", self.moo_chunk_size, "it must be a positive integer or None")
        if self.moo_chunk_memory_mb is not None:
            if isinstance(self.moo_chunk_memory_mb, bool) or not (
                isinstance(self.moo_chunk_memory_mb, int | float) and self.moo_chunk_memory_mb > 0
            ):
                _fail("moo_chunk_memory_mb", self.moo_chunk_memory_mb, "it must be a positive number of MiB or None")
            if self.moo_chunk_size is not None:
                _fail("moo_chunk_memory_mb", self.moo_chunk_memory_mb,
                      f"`moo_chunk_size` is {self.moo_chunk_size}: set one of the two, not both")
        if not (isinstance(self.moo_sketch_dim, int) and self.moo_sketch_dim >= 1):
            _fail("moo_sketch_dim", self.moo_sketch_dim, "it must be a positive integer")
        if not (isinstance(self.moo_solve_every, int) and self.moo_solve_every >= 1):
            _fail("moo_solve_every", self.moo_solve_every, "it must be a positive integer (1 solves every step)")
        if self.moo_class_groups is not None and not (
            isinstance(self.moo_class_groups, int) and self.moo_class_groups >= 2
        ):
            _fail("moo_class_groups", self.moo_class_groups, "it must be an integer >= 2, or None (one per class)")
        if self.moo_modules is not None and (
            not self.moo_modules or not all(isinstance(p, str) and p for p in self.moo_modules)
        ):
            _fail("moo_modules", self.moo_modules, "give a non-empty list of module-name patterns, or None")

    def _check_schedule_keys(self) -> None:
        """The class counts and the reference learning-rate schedule (milestones, warm-up, decay)."""
        if self.class_counts is not None:
            bad = [i for i, n in enumerate(self.class_counts) if int(n) < 1]
            if bad:
                _fail("class_counts", self.class_counts, f"class(es) {bad[:5]} have no training sample")
        if self.lr_milestones is not None and list(self.lr_milestones) != sorted(self.lr_milestones):
            _fail("lr_milestones", self.lr_milestones, "milestones must be increasing")
        if self.lr_warmup_epochs < 0:
            _fail("lr_warmup_epochs", self.lr_warmup_epochs, "it must be >= 0")
        if not 0 < self.lr_decay <= 1:
            _fail("lr_decay", self.lr_decay, "it must lie in (0, 1]")

    def _check_monitoring_keys(self) -> None:
        """The non-finite step guard and the periodic analysis."""
        for key in ("max_consecutive_bad_steps", "analysis_every_steps"):
            if getattr(self, key) < 0:
                _fail(key, getattr(self, key), "it must be >= 0 (0 switches it off)")
        if self.analysis_num_batches < 1:
            _fail("analysis_num_batches", self.analysis_num_batches, "it must be >= 1")

    def _changed_from_defaults(self, keys: tuple[str, ...]) -> dict[str, object]:
        """The values of ``keys`` that differ from their field defaults (what the user set, as far as a dataclass
        can tell: an explicit value equal to the default is indistinguishable from it; recipes know more)."""
        fields = self.__dataclass_fields__
        return {key: getattr(self, key) for key in keys if getattr(self, key) != fields[key].default}

    def _validate_registered_choices(self) -> None:
        """Checks derived from the registries, so that a bad name fails here, before any data or model exists:
        ``loss_type`` is a name of ``plot_hf.losses.LOSSES`` and the loss accepts ``loss_kwargs`` (the loss is
        built once on ``class_counts``, or on two dummy classes, so a bad value fails here too); ``m2m`` is a
        mapping (its keys are checked by the recipe parser and by ``M2mTrainer``)."""
        if self.loss_type not in LOSSES:
            raise ValueError(
                f"`loss_type`={self.loss_type!r} is not a registered loss; valid names are: {', '.join(LOSSES)}."
            )
        if self.loss_kwargs is not None and not isinstance(self.loss_kwargs, dict):
            raise ValueError(f"`loss_kwargs` must be a mapping of keyword arguments, got {self.loss_kwargs!r}.")
        try:
            build_loss(self.loss_type, self.class_counts or [2, 1], **(self.loss_kwargs or {}))
        except (TypeError, ValueError) as error:
            raise ValueError(f"`loss_kwargs`={self.loss_kwargs!r} do not fit `loss_type`={self.loss_type!r}: "
                             f"{error}") from None
        if self.m2m is not None and not isinstance(self.m2m, dict):
            raise ValueError(f"`m2m` must be a mapping of plot_hf.m2m.M2mConfig fields or None, got {self.m2m!r}.")

    def solver_hyperparameters(self) -> dict:
        """The chosen solver's hyperparameters: the config fields its class names in ``config_keys`` (CAGrad's
        `cagrad_alpha`, `cagrad_rescale`), then `moo_solver_kwargs`."""
        keys = SOLVERS[self.moo_solver].config_keys
        return {name: getattr(self, key) for name, key in keys.items()} | dict(self.moo_solver_kwargs or {})

    def build_solver(self) -> Solver:
        """The solver of `moo_solver` built from :meth:`solver_hyperparameters`."""
        return build_solver(self.moo_solver, **self.solver_hyperparameters())

    @property
    def plot_enabled(self) -> bool:
        return self.moo_until_epoch > 0


def check_plain_framework(values: Mapping[str, object], num_train_epochs: float) -> None:
    """Raise ``ValueError`` naming both keys when a value in ``values`` contradicts ``moo_framework: plain``.

    Plain MOO runs the solver at every step of training without SAM or the variability-collapse loss, so it
    sets ``moo_until_epoch = num_train_epochs``, ``sam_rho = 0`` and ``vc_weight = 0``. Values consistent
    with it are accepted: ``sam_rho`` and ``vc_weight`` 0, ``moo_until_epoch`` 0 (PLOT off) or at least
    ``num_train_epochs``. ``values`` holds what the user set: the keys of a recipe (file or command line), or
    the fields of a ``PLOTConfig`` that differ from their defaults. With ``moo_until_epoch`` 0 PLOT is off and
    plain sets nothing, so nothing conflicts.
    """
    if values.get("moo_until_epoch") == 0:
        return
    for key in PLAIN_FRAMEWORK_KEYS:
        if key not in values:
            continue
        value = values[key]
        if key == "moo_until_epoch":
            if isinstance(value, int | float) and (value == 0 or value >= num_train_epochs):
                continue
            why = f"plain MOO runs at every step of training (`num_train_epochs`={num_train_epochs:g})"
            fix = f"set it to 0 (PLOT off) or to at least {num_train_epochs:g}"
        elif value == 0:
            continue
        else:
            why = "plain MOO runs " + ("without SAM" if key == "sam_rho" else "without the variability-collapse loss")
            fix = "set it to 0"
        raise ValueError(
            f"`moo_framework`='plain' conflicts with `{key}`={value!r}: {why}. Remove `{key}` or {fix}, or use "
            f"`moo_framework: plot` to keep it."
        )
