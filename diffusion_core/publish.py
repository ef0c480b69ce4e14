"""Release: copy a run's export to where it ships (`ship`), and put a checkpoint and the app on the
Hugging Face Hub as a model repo and a Gradio Space (`publish`).

    python -m diffusion_core train --config configs/emoji32_guide.json --ship checkpoints/emoji32/guide
    python -m diffusion_core publish --model-repo USER/NAME --space USER/NAME [--out DIR] [--dry-run]

`publish` writes DIR/model (the checkpoint in the Hub's layout, its guide in guide/, its card with the
Hub's metadata) and DIR/space (the app: app.py, ui/, diffusion_core/, requirements.txt, the emoji data the
app shows, and a README whose front matter is the Space's configuration). The Space reads its weights
from the model repo through HF_MODEL_ID: set as a Space variable on upload and written into the Space's
app.py as the default, so a copy of the Space without the variable still finds them. Uploads go through
huggingface_hub's create_repo and upload_folder (large files through the Hub's storage, no git history).
Nothing here imports gradio: the Space's sdk_version is read from the installed package's metadata.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
REQUIRED = ("config.json", "model.safetensors")
GUIDE_FOLDER = "guide"
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
LICENSE_ID = "cc-by-sa-4.0"  # OpenMoji's share-alike carries to the data and the weights (assets/LICENSES.md)
# What the app needs beside its code: the emoji sprites it shows (Forward process, real rows), the
# evaluation classifier, and the licences of both.
SPACE_ASSETS = ("assets/emoji_sprites.npz", "assets/classifier.safetensors", "assets/LICENSES.md", "assets/licenses")
SPACE_FILES = ("app.py", "requirements.txt", "LICENSE")
SPACE_PACKAGES = ("diffusion_core", "ui")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def check_checkpoint(folder: str | os.PathLike) -> Path:
    """``folder`` as a Path if it holds a checkpoint (config.json and model.safetensors), else ValueError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} is not a checkpoint: it lacks {', '.join(missing)}")
    return folder


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy one file so that ``dst`` is never half-written (a temporary file beside it, then a rename)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def ship(export_dir: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copy a run's exported checkpoint into ``dest`` (e.g. checkpoints/emoji32), file by file and
    atomically. ``dest``'s own files that the export lacks are removed (a stale evaluation or vocabulary
    must not describe the new weights); its sub-folders that the export lacks, such as a guide/, stay.
    Returns the names copied."""
    src = check_checkpoint(export_dir)
    dest = Path(dest)
    if dest.resolve() == src.resolve():
        raise ValueError(f"--ship {dest}: that is the export folder itself")
    copied = []
    for path in sorted(src.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            copy_atomic(path, dest / path.relative_to(src))
            copied.append(str(path.relative_to(src)))
    for path in dest.iterdir():
        if path.is_file() and not (src / path.name).exists():
            path.unlink()
    return copied


def hub_card(card: str, model_repo: str | None = None, space_repo: str | None = None) -> str:
    """A model card with the Hub's metadata in front (the card's own, else licence, library and tags),
    and how to load it from ``model_repo`` and where its Space is at the end."""
    if not card.startswith("---\n"):
        card = "\n".join(["---", f"license: {LICENSE_ID}", "library_name: diffusion_core",
                          "tags: [diffusion, emoji, pixel-art]", "---", ""]) + card
    if model_repo:
        card = card.rstrip("\n") + (
            f"\n\n## From the Hub\n```python\nfrom diffusion_core.pipeline import DiffusionPipeline\n\n"
            f"pipe = DiffusionPipeline.from_pretrained(\"{model_repo}\")\n"
            f"images = pipe.generate(num_images=16, classes=[\"face\"]).images   # uint8 (16, 32, 32, 3)\n```\n")
    if space_repo:
        card += f"\nTry it in the Space: https://huggingface.co/spaces/{space_repo}\n"
    return card


def build_model_folder(checkpoint: str | os.PathLike, out: str | os.PathLike, model_repo: str | None = None,
                       space_repo: str | None = None) -> Path:
    """``out``: a copy of the checkpoint (its guide/ included) whose card carries the Hub's metadata."""
    src, out = check_checkpoint(checkpoint), Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, ignore=IGNORED)
    for card in [out / "README.md", out / GUIDE_FOLDER / "README.md"]:
        if card.is_file():
            card.write_text(hub_card(card.read_text(), model_repo if card.parent == out else None,
                                     space_repo if card.parent == out else None))
    return out


def gradio_version() -> str:
    """The installed gradio's version (the Space's sdk_version), from package metadata."""
    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError as err:
        raise ValueError("gradio is not installed here, so the Space's sdk_version is unknown: "
                         "pip install -r requirements.txt") from err


def space_readme(space_repo: str, model_repo: str, fast_repo: str | None = None) -> str:
    """The Space's README: its configuration (Spaces config reference) in the front matter, then a note."""
    models = [model_repo] + ([fast_repo] if fast_repo else [])
    front = ["---", "title: Watch a diffusion model draw", "emoji: 🎨", "colorFrom: indigo", "colorTo: pink",
             "sdk: gradio", f"sdk_version: {gradio_version()}",
             f'python_version: "{sys.version_info.major}.{sys.version_info.minor}"', "app_file: app.py",
             "pinned: false", f"license: {LICENSE_ID}",
             "short_description: A small diffusion model drawing emoji sprites, step by step.",
             "models:"] + [f"- {m}" for m in models] + ["---", ""]
    body = f"""# Watch a diffusion model draw

A small U-Net turns noise into 32x32 emoji sprites, and the app shows every step. Made with
`diffusion_core` for learners of DeepLearning.AI's
[How Diffusion Models Work](https://www.deeplearning.ai/short-courses/how-diffusion-models-work/).

Weights: the model repo [{model_repo}](https://huggingface.co/{model_repo}), read through the `HF_MODEL_ID`
variable (set on this Space; `app.py` falls back to the same id).{f" Fast model for live redraws: [{fast_repo}](https://huggingface.co/{fast_repo}) (`HF_FAST_MODEL_ID`)." if fast_repo else ""}

Licences: the code is MIT (`LICENSE`); the emoji data (`assets/`) and the weights are CC BY-SA 4.0
through OpenMoji, with the attributions in `assets/LICENSES.md`. Published by
`python -m diffusion_core publish --model-repo {model_repo} --space {space_repo}`.
"""
    return "\n".join(front) + body


def space_app(app_source: str, model_repo: str, fast_repo: str | None = None) -> str:
    """The project's app.py with the model repo as its default HF_MODEL_ID (and HF_FAST_MODEL_ID)."""
    defaults = ["import os  # published Space: the model repo it was published with, unless the Space sets another",
                f"os.environ.setdefault(\"HF_MODEL_ID\", {model_repo!r})"]
    if fast_repo:
        defaults.append(f"os.environ.setdefault(\"HF_FAST_MODEL_ID\", {fast_repo!r})")
    anchor = "from __future__ import annotations\n"
    if anchor in app_source:
        head, tail = app_source.split(anchor, 1)
        return head + anchor + "\n".join(defaults) + "\n" + tail
    return "\n".join(defaults) + "\n" + app_source


def build_space_folder(out: str | os.PathLike, space_repo: str, model_repo: str, fast_repo: str | None = None,
                       root: str | os.PathLike = PROJECT) -> Path:
    """``out``: a self-contained Gradio app (code, requirements, the data it shows, README)."""
    root, out = Path(root), Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for package in SPACE_PACKAGES:
        shutil.copytree(root / package, out / package, ignore=IGNORED)
    for name in SPACE_FILES + SPACE_ASSETS:
        src = root / name
        if not src.exists():
            raise ValueError(f"{src} is missing: the Space needs it")
        if src.is_dir():
            shutil.copytree(src, out / name, ignore=IGNORED)
        else:
            copy_atomic(src, out / name)
    (out / "app.py").write_text(space_app((root / "app.py").read_text(), model_repo, fast_repo))
    (out / "README.md").write_text(space_readme(space_repo, model_repo, fast_repo))
    return out


@dataclass
class Upload:
    folder: Path
    repo_id: str
    repo_type: str  # "model" or "space"
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    variables: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        kind = "Space" if self.repo_type == "space" else "model repo"
        extra = "".join(f"\n  variable {k}={v}" for k, v in self.variables.items())
        return (f"{kind} {self.repo_id} <- {self.folder}: {len(self.files)} files, {self.bytes / 2**20:.1f} MiB"
                f"{extra}\n" + "\n".join(f"  {f}" for f in self.files))


def listing(folder: Path) -> tuple[list[str], int]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [str(p.relative_to(folder)) for p in files], sum(p.stat().st_size for p in files)


def check_repo_id(value: str, flag: str) -> str:
    if not REPO_ID.match(value or ""):
        raise ValueError(f"{flag} must be a Hub repo id like 'user/name', got {value!r}")
    return value


def prepare(model_repo: str, space_repo: str, out: str | os.PathLike = "release",
            checkpoint: str | os.PathLike = PROJECT / "checkpoints" / "emoji32",
            fast_repo: str | None = None, fast_checkpoint: str | os.PathLike | None = None) -> list[Upload]:
    """Write the folders to upload (model, fast model if asked, Space) and say what each holds."""
    check_repo_id(model_repo, "--model-repo")
    check_repo_id(space_repo, "--space")
    if fast_repo:
        check_repo_id(fast_repo, "--fast-model-repo")
    out = Path(out)
    uploads = [Upload(build_model_folder(checkpoint, out / "model", model_repo, space_repo), model_repo, "model")]
    if fast_repo:
        fast_src = fast_checkpoint or PROJECT / "checkpoints" / "emoji32_fast"
        uploads.append(Upload(build_model_folder(fast_src, out / "fast", fast_repo, space_repo), fast_repo, "model"))
    variables = {"HF_MODEL_ID": model_repo, **({"HF_FAST_MODEL_ID": fast_repo} if fast_repo else {})}
    uploads.append(Upload(build_space_folder(out / "space", space_repo, model_repo, fast_repo), space_repo, "space",
                          variables=variables))
    for upload in uploads:
        upload.files, upload.bytes = listing(upload.folder)
    return uploads


def upload_all(uploads: list[Upload], token: str | None = None, private: bool = False) -> list[str]:
    """Create each repo (if new) and upload its folder in one commit; returns their URLs."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    urls = []
    for up in uploads:
        space = {"space_sdk": "gradio"} if up.repo_type == "space" else {}
        url = api.create_repo(up.repo_id, repo_type=up.repo_type, private=private, exist_ok=True, **space)
        for key, value in up.variables.items():
            api.add_space_variable(up.repo_id, key, value)
        api.upload_folder(repo_id=up.repo_id, repo_type=up.repo_type, folder_path=up.folder,
                          commit_message="diffusion_core publish")
        urls.append(str(url))
    return urls
