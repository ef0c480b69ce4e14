"""DiffusionPipeline: a trained U-Net, its noise schedule and its context labels as one object.

A checkpoint is a folder in the Hugging Face Hub's layout: config.json (the network's name, ``network``,
"unet" or "mp_unet" (networks.py), and its arguments, plus the schedule, prediction type, labels, styles and
``default_sampling``), model.safetensors (EMA weights), README.md (the model card), for a text model
vocab.json, and optionally guide/: a smaller, less trained checkpoint of the same data that autoguidance
steers away from (autoguidance.py). ``from_pretrained`` takes such a folder or a Hub repo id.

A text prompt travels through the samplers packed into the context: the sampler sees one float
(N, K + L) tensor, the K class and style weights followed by the L token ids, so the all-zero row is
"no class, no style, no text" and classifier-free guidance needs nothing new (``denoise`` unpacks it).
"""
from __future__ import annotations

import copy
import json
import math
import os
import platform
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import edm
from .autoguidance import autoguided_denoiser
from .samplers import DEFAULT_SAMPLER, MAX_GUIDANCE, SAMPLERS, check_sampling_args, sample
from .sdedit import check_strength
from .schedule import NoiseSchedule
from .lexicon import read_word
from .text import VOCAB_NAME, Vocabulary, words
from .networks import build_network, network_arguments, network_name
from .unet import WEIGHTS_NAME, UNet, load_weights_strict, weights_torch_dtype

MAX_IMAGES = 64
# Rows per network call: every call runs on chunks of exactly this many rows (the last padded), so the
# arithmetic oneDNN (or cuDNN) picks for a row never depends on the request's size, and image i of a
# request with seed s is bit for bit the same whatever the batch size, in fp32 and in bf16 (measured:
# unchunked, fp32 batches of 4 and 16 differed by up to 13/255). 16 rows is the default request's
# unguided width and half its guided one, so it pads nothing there.
NETWORK_ROWS = 16
CONFIG_NAME = "config.json"
GUIDE_FOLDER = "guide"  # a checkpoint's autoguidance model, a checkpoint folder of its own inside it
PIPELINE_KEYS = ("schedule", "num_timesteps", "prediction_type", "labels", "styles", "default_sampling", "recipe")
VOCAB_HASH_KEY = "vocab_sha256"  # a text model's config.json: the hash of its vocab.json's words in order
FALLBACK_SAMPLING = {"sampler": DEFAULT_SAMPLER, "steps": 20, "guidance": 3.0}  # for checkpoints without default_sampling
# keys added after checkpoints shipped: what a config.json without one means
ADDED_KEYS = {"patch_size": 1, "recipe": [], "network": "unet"}
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] float NCHW -> uint8 NHWC, the format at the library's edges."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 natively, so bf16 autocast can pay off: on x86, AVX-512 BF16 or
    AMX. oneDNN also runs bf16 on plain AVX-512, by emulation, at about twice the fp32 time
    (``benchmarks/results/bf16_emulated.md``), so its own check is asked only on other CPUs (ARM's BF16)."""
    try:
        if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class Trajectory:
    """The denoising path: for each step its timestep, the input x_t and the predicted x_0 (uint8)."""
    timesteps: list[int] = field(default_factory=list)
    x_t: list[np.ndarray] = field(default_factory=list)
    x0_pred: list[np.ndarray] = field(default_factory=list)


@dataclass
class GenerationOutput:
    images: np.ndarray                 # uint8 (n, H, W, 3)
    labels: np.ndarray                 # int (n,), the class index per image, -1 when unconditional
    seconds: float
    trajectory: Trajectory | None = None
    unknown_words: list[str] = field(default_factory=list)  # words of the prompt the model does not know
    dropped_words: list[str] = field(default_factory=list)  # words past the prompt length the model reads
    autoguidance: float | None = None  # the autoguidance strength used (None: none)
    read_as: dict[str, str] = field(default_factory=dict)  # unknown words of the prompt read as known ones (lexicon.py)


def config_keys(config: dict) -> set[str]:
    """The keys a checkpoint's config.json must hold: ``network`` and that network's arguments (networks.py;
    no ``network``: "unet"), ``PIPELINE_KEYS``, and ``vocab_sha256`` for a text model (``vocab_size`` > 0).
    ``DiffusionPipeline.config`` writes them."""
    keys = network_arguments(config.get("network", "unet")) | {"network"} | set(PIPELINE_KEYS)
    return keys | {VOCAB_HASH_KEY} if config.get("vocab_size") else keys


def read_config(path: Path) -> dict:
    """config.json as a dict, strictly: a key it lacks or one no writer makes is an error naming it (a key
    in ``ADDED_KEYS`` that it lacks reads as the value every checkpoint before that key had)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is missing or not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object")
    try:
        expected = config_keys(config)
    except ValueError as err:  # an unknown network
        raise ValueError(f"{path}: {err}") from err
    config = {**ADDED_KEYS, **config}
    unknown, missing = sorted(config.keys() - expected), sorted(expected - config.keys())
    if unknown:
        raise ValueError(f"{path} holds unknown keys {unknown} (this version reads {sorted(expected)})")
    if missing:
        hint = ""
        if VOCAB_HASH_KEY in missing and (path.parent / VOCAB_NAME).is_file():
            try:
                found = Vocabulary.load(path.parent, int(config["vocab_size"])).sha256()
                hint = (f"; if {path.parent / VOCAB_NAME} is the vocabulary the model was trained with, add "
                        f'"{VOCAB_HASH_KEY}": "{found}"')
            except (ValueError, TypeError):
                pass
        raise ValueError(f"{path} lacks the keys {missing}{hint}")
    return config


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint folder as is; a Hub repo id through huggingface_hub (which honours
    HF_HUB_OFFLINE and its cache). Raises ValueError when neither works."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    name = str(name_or_path)
    if not REPO_ID_PATTERN.match(name):
        raise ValueError(f"model must be a checkpoint folder or a Hub repo id like 'user/name', got {name!r}")
    from huggingface_hub import snapshot_download

    try:
        files = [CONFIG_NAME, WEIGHTS_NAME, VOCAB_NAME, "README.md"]
        return Path(snapshot_download(name, allow_patterns=files + [f"{GUIDE_FOLDER}/{f}" for f in files]))
    except Exception as err:  # offline, not cached, unknown repo, no network: all mean "not available"
        raise ValueError(f"could not get model {name!r} from the Hugging Face Hub or its cache: {err}") from err


def check_pictures(pictures, name: str, num_images: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """``pictures`` of one picture's ``shape`` (used for all ``num_images``) or (num_images, *shape), of
    ``dtype``, as (num_images, *shape); a ValueError that names the expected and the given otherwise."""
    kind = "uint8" if dtype == np.uint8 else "bool"
    size = "x".join(map(str, shape[:2]))
    expected = f"{kind} {shape} or ({num_images}, {', '.join(map(str, shape))})"
    if not isinstance(pictures, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, {expected}; got {type(pictures).__name__}")
    if pictures.dtype != dtype:
        raise ValueError(f"{name} must be {kind}, {expected}; got {pictures.dtype}")
    if pictures.ndim == len(shape):
        pictures = np.broadcast_to(pictures, (num_images, *pictures.shape))
    if pictures.ndim != len(shape) + 1 or pictures.shape[-len(shape):][2:] != shape[2:]:
        raise ValueError(f"{name} must have shape {expected}; got {pictures.shape}")
    if pictures.shape[1:3] != shape[:2]:
        raise ValueError(f"{name} must be {size} pixels, the model's size (resize it first, as uploads.read_picture "
                         f"does); got {pictures.shape[1]}x{pictures.shape[2]}")
    if len(pictures) != num_images:
        raise ValueError(f"{name} holds {len(pictures)} pictures for {num_images} images: give one picture, or one "
                         "per image")
    return pictures


class DiffusionPipeline:
    """``pipe.generate(num_images=16, classes=["food_drink"], sampler="dpmpp_2m_sde", steps=20, guidance=3.0)``"""

    def __init__(self, model: UNet, schedule: NoiseSchedule, labels: list[str], styles: list[str] | None = None,
                 prediction_type: str = "epsilon", device: str | torch.device | None = None,
                 dtype: str = "float32", vocabulary: Vocabulary | None = None, default_sampling: dict | None = None,
                 recipe: list[str] | None = None):
        styles = list(styles or [])
        recipe = [] if recipe is None else recipe
        if not isinstance(recipe, list) or not all(isinstance(path, str) for path in recipe):
            raise ValueError(f"recipe must be a list of config paths, got {recipe!r}")
        if model.context_dim != len(labels) + len(styles):
            raise ValueError(f"the model's context_dim ({model.context_dim}) must equal the number of labels "
                             f"({len(labels)}) plus styles ({len(styles)})")
        if bool(model.vocab_size) != (vocabulary is not None) or (vocabulary is not None and (
                len(vocabulary) != model.vocab_size or vocabulary.max_tokens != model.max_tokens)):
            raise ValueError("a text model needs the vocabulary it was built with (and a model without text none)")
        self.schedule, self.labels, self.styles = schedule, list(labels), styles
        self.vocabulary = vocabulary
        self.default_sampling = {**FALLBACK_SAMPLING, **(default_sampling or {})}
        self.recipe = list(recipe)  # the config files that made these weights, in the order they ran
        self.prediction_type = prediction_type
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.memory_format = torch.channels_last  # see set_dtype
        self.model = model.eval().to(self.device, memory_format=self.memory_format)
        self.source = None  # where the weights came from (a folder or Hub repo id), set by from_pretrained
        self.folder: Path | None = None  # the local folder they were read from (a Hub cache snapshot for an id)
        self.guide: DiffusionPipeline | None = None  # the bad version of this model for autoguidance (set_guide)
        self.set_dtype(dtype)

    # ---- loading and saving ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device=None, dtype: str = "float32") -> "DiffusionPipeline":
        """Load a checkpoint folder (or Hub repo id) strictly: config.json must hold exactly the keys
        ``config()`` writes (an unknown or a missing key is an error naming it), the weights every tensor
        the model has, and a text model's vocab.json the words, in the order, its ``vocab_sha256`` names."""
        folder = resolve_checkpoint(name_or_path)
        config = read_config(folder / CONFIG_NAME)
        try:
            model = build_network(config["network"], **{k: config[k] for k in network_arguments(config["network"])})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{folder / CONFIG_NAME} holds invalid model arguments: {err}") from err
        load_weights_strict(model, str(folder / WEIGHTS_NAME))
        vocabulary = None
        if model.vocab_size:
            vocabulary = Vocabulary.load(folder, model.vocab_size)
            if vocabulary.sha256() != config[VOCAB_HASH_KEY]:
                raise ValueError(f"{folder / VOCAB_NAME} is not the vocabulary this model was trained with: its words "
                                 f"or their order differ ({VOCAB_HASH_KEY} {vocabulary.sha256()}, config.json says "
                                 f"{config[VOCAB_HASH_KEY]})")
        pipe = cls(model, NoiseSchedule(config["schedule"], config["num_timesteps"]), config["labels"],
                   config["styles"], config["prediction_type"], device=device, dtype=dtype, vocabulary=vocabulary,
                   default_sampling=config["default_sampling"], recipe=config["recipe"])
        pipe.source, pipe.folder = str(name_or_path), folder
        if (folder / GUIDE_FOLDER / CONFIG_NAME).is_file():
            pipe.set_guide(cls.from_pretrained(folder / GUIDE_FOLDER, device=device, dtype=dtype))
        return pipe

    def set_guide(self, guide: "DiffusionPipeline | None") -> None:
        """Use ``guide`` for autoguidance (None: none). It must draw the same pictures from the same
        inputs: same schedule, prediction type, image shape, labels and styles; no text encoder or
        this model's vocabulary."""
        if guide is not None:
            if self.guidance_distilled:
                raise ValueError("a model with guidance distilled into it takes no guide")
            mine, its = self.model, guide.model
            checks = [("schedule", self.schedule.kind, guide.schedule.kind),
                      ("num_timesteps", self.schedule.num_timesteps, guide.schedule.num_timesteps),
                      ("prediction_type", self.prediction_type, guide.prediction_type),
                      ("image shape", (mine.in_channels, mine.image_size), (its.in_channels, its.image_size)),
                      ("labels", self.labels, guide.labels), ("styles", self.styles, guide.styles),
                      ("guidance as an input", self.guidance_distilled, guide.guidance_distilled)]
            for name, want, got in checks:
                if want != got:
                    raise ValueError(f"the guide model's {name} ({got!r}) differs from this model's ({want!r})")
            if guide.vocabulary is not None and (self.vocabulary is None or guide.vocabulary.tokens != self.vocabulary.tokens):
                raise ValueError("the guide model's vocabulary differs from this model's (a guide without text works)")
            guide.model.to(self.device)
            guide.device = self.device
        self.guide = guide

    def config(self) -> dict:
        """What config.json holds (``read_config`` expects exactly these keys): the network's name and
        arguments, ``PIPELINE_KEYS`` and, for a text model, ``vocab_sha256``."""
        config = {"network": network_name(self.model), **self.model._hub_mixin_config, "schedule": self.schedule.kind,
                  "num_timesteps": self.schedule.num_timesteps, "prediction_type": self.prediction_type,
                  "labels": self.labels, "styles": self.styles, "default_sampling": self.default_sampling,
                  "recipe": self.recipe}
        if self.vocabulary is not None:
            config[VOCAB_HASH_KEY] = self.vocabulary.sha256()
        return config

    def save_pretrained(self, folder: str | os.PathLike, model_card: str | None = None,
                        weights_dtype: str = "float32") -> Path:
        """Write config.json, model.safetensors and README.md into ``folder``, atomically: everything
        goes to a temporary folder beside it first, which then replaces ``folder`` in one rename.
        ``weights_dtype="float16"`` stores the weights in half the bytes; ``from_pretrained`` reads
        them back into the float32 model (``unet.round_weights`` first makes this model match them)."""
        dtype = weights_torch_dtype(weights_dtype)
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint folder is for everyone to read
        try:
            if model_card is not None:
                (staging / "README.md").write_text(model_card)
            stored = self.model if dtype == torch.float32 else copy.deepcopy(self.model).to(dtype)
            stored.save_pretrained(staging, config=self.config())
            if self.vocabulary is not None:
                self.vocabulary.save(staging)
            if self.guide is not None:
                card = self.guide.folder / "README.md" if self.guide.folder is not None else None
                self.guide.save_pretrained(staging / GUIDE_FOLDER, card.read_text() if card and card.is_file() else None,
                                           weights_dtype)
            for extra in folder.glob("*") if folder.is_dir() else []:  # keep logs and grids already there
                if not (staging / extra.name).exists():
                    shutil.copy2(extra, staging / extra.name) if extra.is_file() else shutil.copytree(extra, staging / extra.name)
            old = folder.with_name(f".{folder.name}.old")
            if folder.exists():
                shutil.rmtree(old, ignore_errors=True)
                folder.rename(old)
            staging.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def push_to_hub(self, repo_id: str, folder: str | os.PathLike, **kwargs):
        """Upload a saved checkpoint folder to the Hub (needs network and a token)."""
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, exist_ok=True, **kwargs)
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder))

    # ---- precision ---------------------------------------------------------------------------
    def set_dtype(self, dtype: str) -> None:
        """"float32", "bfloat16" (autocast), or "auto": bf16 only where the hardware has it natively and
        a quick timing of the network says it is faster. Both run channels_last (oneDNN's preferred
        layout: 16-19% faster than NCHW in fp32 on 2 CPU cores, ``benchmarks/cpu_tuning.py``)."""
        if dtype not in ("float32", "bfloat16", "auto"):
            raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'auto', got {dtype!r}")
        if dtype == "auto":
            native = torch.cuda.is_bf16_supported() if self.device.type == "cuda" else cpu_has_native_bf16()
            dtype = "bfloat16" if native and self._bf16_is_faster() else "float32"
        self.dtype = dtype
        if getattr(self, "guide", None) is not None:
            self.guide.set_dtype(dtype)

    def _bf16_is_faster(self, batch: int = 32) -> bool:
        size = self.model.image_size
        x = torch.randn(batch, self.model.in_channels, size, size, device=self.device)
        t = torch.zeros(batch, dtype=torch.long, device=self.device)
        w = torch.ones(batch, device=self.device) if self.guidance_distilled else None
        times = {}
        for dtype in ("float32", "bfloat16"):
            self.dtype = dtype
            self.denoise(x, t, None, w)  # warm-up
            start = time.perf_counter()
            self.denoise(x, t, None, w)
            times[dtype] = time.perf_counter() - start
        return times["bfloat16"] < 0.9 * times["float32"]

    @property
    def guidance_distilled(self) -> bool:
        """Whether the model takes the guidance strength as an input (a distilled student, distill.py):
        then one call per step serves any w, and ``generate`` does not run two branches."""
        return self.model.guidance_embedding

    @torch.no_grad()
    def denoise(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        """The model as a denoiser callable, under bf16 autocast when chosen; returns float32. A
        context wider than the model's carries token ids after the class and style weights. An EDM model
        (``prediction_type`` "edm") gets its input scaled by c_in here, as it was in training."""
        tokens = None
        if self.prediction_type == "edm":  # EDM's c_in: the network sees x_t / √k (edm.py)
            x_t = x_t * edm.coefficients(self.schedule.alphas_cumprod[t.cpu()], x_t)[0]
        if context is not None and context.shape[1] > self.model.context_dim:
            context, tokens = context[:, :self.model.context_dim], context[:, self.model.context_dim:].round().long()
        n, pad = len(x_t), -len(x_t) % NETWORK_ROWS
        inputs = [v if v is None or not pad else torch.cat([v, v[-1:].expand(pad, *v.shape[1:])])
                  for v in (x_t, t, context, tokens, guidance)]  # the last chunk padded with copies of the last row
        outs = []
        with self.autocast():
            for start in range(0, n + pad, NETWORK_ROWS):
                x, *rest = [None if v is None else v[start:start + NETWORK_ROWS] for v in inputs]
                outs.append(self.model(x.contiguous(memory_format=self.memory_format), *rest).float())
        return torch.cat(outs)[:n]

    def autocast(self) -> torch.autocast:
        """bf16 autocast when this pipeline runs in bf16 (a no-op context otherwise). Entered around a whole
        request, its bf16 copies of the weights are cached until it ends instead of remade at every call."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16")

    # ---- context -----------------------------------------------------------------------------
    def context_for(self, num_images: int, classes=None, blend=None, style=None,
                    prompt: str | list[str] | None = None) -> tuple[torch.Tensor | None, np.ndarray, list[str]]:
        """The (n, K) context (n, K + L with a text model), per-image class indices and the prompt's
        unknown words. ``classes``: a name or a list of names, image i gets classes[i % len];
        ``blend``: {name: weight in 0..1}, one blended context for all; ``style``: one of
        ``self.styles``; ``prompt``: text, or a list of texts (image i gets prompt[i % len]). With
        none of them: no context (unconditional)."""
        if classes is not None and blend is not None:
            raise ValueError("give either classes or blend, not both")
        prompts = [""] if prompt is None else list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be text or a non-empty list of texts, got {prompt!r}")
        if any(prompts) and self.vocabulary is None:
            raise ValueError("this model has no text encoder; use classes, blend or style instead of a prompt")
        n_labels = len(self.labels)
        text_width = self.vocabulary.max_tokens if self.vocabulary is not None else 0
        ctx = np.zeros((num_images, n_labels + len(self.styles) + text_width), dtype=np.float32)
        class_index = np.full(num_images, -1, dtype=np.int64)
        unknown = []
        if any(prompts):
            encoded = [self.vocabulary.encode(p) for p in prompts]
            unknown = list(dict.fromkeys(w for _, unknown_here in encoded for w in unknown_here))
            ctx[:, ctx.shape[1] - text_width:] = [encoded[i % len(encoded)][0] for i in range(num_images)]
        if classes is not None:
            classes = [classes] if isinstance(classes, str) else list(classes)
            if not classes:
                raise ValueError("classes must name at least one class")
            for name in classes:
                if name not in self.labels:
                    raise ValueError(f"unknown class {name!r}; classes are {self.labels}")
            class_index[:] = [self.labels.index(classes[i % len(classes)]) for i in range(num_images)]
            ctx[np.arange(num_images), class_index] = 1.0
        if blend is not None:
            for name, weight in dict(blend).items():
                if name not in self.labels:
                    raise ValueError(f"unknown class {name!r} in blend; classes are {self.labels}")
                if not isinstance(weight, (int, float)) or not math.isfinite(weight) or not 0 <= weight <= 1:
                    raise ValueError(f"blend weight for {name!r} must be a number in 0..1, got {weight!r}")
                ctx[:, self.labels.index(name)] = weight
            if ctx[0, :n_labels].any():
                class_index[:] = int(ctx[0, :n_labels].argmax())
        if style is not None:
            if style not in self.styles:
                raise ValueError(f"unknown style {style!r}; styles are {self.styles}")
            ctx[:, n_labels + self.styles.index(style)] = 1.0
        if not ctx.any():
            return None, class_index, unknown
        return torch.from_numpy(ctx).to(self.device), class_index, unknown

    # ---- sampling ----------------------------------------------------------------------------
    def generate(self, num_images: int = 16, classes=None, blend=None, style=None, prompt: str | list[str] | None = None,
                 sampler: str | None = None, steps: int | None = None, guidance: float | None = None, eta: float = 0.0,
                 seed: int = 0, return_trajectory: bool = False, callback=None,
                 guidance_interval: tuple[float, float] | None | str = "default",
                 autoguidance: float | None | str = "default", read_words: bool = True,
                 init_image: np.ndarray | None = None, strength: float = 1.0,
                 mask: np.ndarray | None = None) -> GenerationOutput:
        """Sample ``num_images`` (1..MAX_IMAGES) images as uint8 (n, H, W, 3). Sampler, steps,
        guidance and the guidance interval (``samplers.sample``; None: guide every step) default to
        the checkpoint's ``default_sampling``. ``autoguidance=w`` guides with the checkpoint's guide
        model instead of classifier-free guidance (autoguidance.py; 1 = off, None = off); by default
        ``default_sampling["autoguidance"]`` for requests with no class, style or prompt, where
        classifier-free guidance has nothing to contrast. ``callback(step)`` sees every SamplerStep
        (for progress bars and live previews). With ``read_words``, a prompt's words the model does not know
        are read as ones it knows where WordNet links them ("croissant" as "bread": ``read_prompt``).

        Editing (sdedit.py): ``init_image`` uint8 (H, W, 3) at the model's size, used for every image, or
        (n, H, W, 3), one per image, is noised to ``strength`` s (0 keeps it, 1 ignores it) and redrawn in
        ``steps`` steps (SDEdit); ``mask`` bool (H, W) or (n, H, W), True where the model may repaint, keeps
        the other pixels (RePaint's replacement). At most ``sdedit.max_steps(s, T)`` steps."""
        if isinstance(guidance_interval, str) and guidance_interval == "default":
            guidance_interval = self.default_sampling.get("guidance_interval")
        sampler = self.default_sampling["sampler"] if sampler is None else sampler
        steps = self.default_sampling["steps"] if steps is None else steps
        guidance_asked = guidance is not None and guidance != 1.0
        guidance = self.default_sampling["guidance"] if guidance is None else guidance
        if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or not 1 <= num_images <= MAX_IMAGES:
            raise ValueError(f"num_images must be an integer in 1..{MAX_IMAGES}, got {num_images!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an integer in 0..2^63-1, got {seed!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        read_as = {}
        if read_words and self.vocabulary is not None and prompt:
            prompt, read_as = self.read_prompt(prompt)
        context, class_index, unknown = self.context_for(int(num_images), classes, blend, style, prompt)
        dropped = [] if self.vocabulary is None or not isinstance(prompt, (str, list, tuple)) else list(dict.fromkeys(
            w for p in ([prompt] if isinstance(prompt, str) else prompt) for w in self.vocabulary.overflow(p)))
        if isinstance(autoguidance, str) and autoguidance == "default":
            autoguidance = self.default_sampling.get("autoguidance") if self.guide is not None and context is None else None
        elif autoguidance is not None and guidance_asked:
            raise ValueError("autoguidance replaces classifier-free guidance: leave guidance unset (or 1) with it")
        init, strength, mask = self.edit_tensors(int(num_images), init_image, strength, mask)
        trajectory = Trajectory() if return_trajectory else None

        def on_step(step):
            if trajectory is not None:
                trajectory.timesteps.append(step.t)
                trajectory.x_t.append(to_uint8(step.x_t))
                trajectory.x0_pred.append(to_uint8(step.x0_pred))
            if callback is not None:
                callback(step)

        denoiser = self.denoise
        if self.guidance_distilled:  # w goes into the network; the sampler sees a plain conditional model
            if guidance_interval is not None:
                raise ValueError("this model has guidance distilled into it (w is an input at every step); "
                                 "guidance_interval does not apply to it")
            check_sampling_args(self.schedule, (1, 1, 1, 1), sampler, steps, eta, guidance, None, self.prediction_type)
            w = float(guidance)
            denoiser = lambda x_t, t, c: self.denoise(x_t, t, c, torch.full((len(x_t),), w, device=x_t.device))  # noqa: E731
            guidance = 1.0
        if autoguidance is not None:
            denoiser = self.autoguided(autoguidance, context)
            guidance = 1.0
        size = self.model.image_size
        start = time.perf_counter()
        with self.autocast():  # once per request (the sampler's own arithmetic is elementwise and stays fp32)
            x0 = sample(denoiser, self.schedule, (int(num_images), self.model.in_channels, size, size),
                        sampler=sampler, steps=steps, eta=eta, guidance=guidance, context=context,
                        prediction_type=self.prediction_type, seed=int(seed), callback=on_step,
                        clip_x0=True, device=self.device, guidance_interval=guidance_interval,
                        init=init, strength=strength, mask=mask)
        return GenerationOutput(to_uint8(x0), class_index, time.perf_counter() - start, trajectory, unknown, dropped,
                                None if autoguidance is None else float(autoguidance), read_as)

    def edit_tensors(self, num_images: int, init_image, strength, mask):
        """``generate``'s picture and mask as the sampler's (n, C, H, W) float in [-1, 1] and (n, 1, H, W)
        bool, each checked with a message that names what is wrong."""
        strength = check_strength(strength)
        if init_image is None:
            if mask is not None:
                raise ValueError("a mask needs the picture it applies to: give init_image as well")
            if strength != 1.0:
                raise ValueError(f"strength {strength:g} needs a picture to start from (init_image); without one "
                                 "it must be 1")
            return None, strength, None
        size, channels = self.model.image_size, self.model.in_channels
        pictures = check_pictures(init_image, "init_image", num_images, (size, size, channels), np.uint8)
        x0 = torch.from_numpy(np.ascontiguousarray(pictures)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if mask is not None:
            mask = torch.from_numpy(check_pictures(mask, "mask", num_images, (size, size), np.bool_)).unsqueeze(1)
            mask = mask.to(self.device)
        return x0.to(self.device), strength, mask

    def read_prompt(self, prompt: str | list[str]) -> tuple[str | list[str], dict[str, str]]:
        """The prompt(s) with each unknown word replaced by the known word it is read as (a singular form, or
        the nearest word up WordNet's hypernym links, ``lexicon.read_word``), and {word: its reading}. Words
        with no reading stay, and ``encode`` reports them as unknown."""
        if not isinstance(prompt, (str, list, tuple)):
            return prompt, {}
        read_as = {}

        def read(text):
            if not isinstance(text, str):
                return text
            out = []
            for word in words(text):
                reading = read_word(word, self.vocabulary.index)
                if reading is not None and reading != word:
                    read_as[word] = reading
                out.append(reading or word)
            return " ".join(out)

        return (read(prompt) if isinstance(prompt, str) else [read(p) for p in prompt]), read_as

    def autoguided(self, w: float, context: torch.Tensor | None):
        """The denoiser guide + w (model - guide) for ``generate``; the guide sees the class and style
        part of the context (and the prompt only if it has this model's vocabulary)."""
        if self.guide is None:
            raise ValueError("this checkpoint has no guide model (a guide/ folder), so autoguidance is not available")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or not 1 <= w <= MAX_GUIDANCE:
            raise ValueError(f"autoguidance must be a number in 1..{MAX_GUIDANCE:g} (1 = off), got {w!r}")
        width = self.guide.model.context_dim + (self.guide.vocabulary.max_tokens if self.guide.vocabulary else 0)
        if context is not None and context[:, width:].any():
            raise ValueError("the guide model has no text encoder: autoguidance works without a prompt")
        guide = lambda x_t, t, c: self.guide.denoise(x_t, t, None if c is None else c[:, :width])  # noqa: E731
        return autoguided_denoiser(self.denoise, guide, float(w))
