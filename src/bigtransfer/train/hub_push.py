"""`--push-to-hub REPO`: a finished run's model/ uploaded to the Hugging Face Hub by rank 0, once model/ and
metrics.json are written (transformers' Trainer calls this hub_strategy="end"; its hub_model_id and
hub_private_repo are our push_to_hub and hub_private_repo). The token is huggingface_hub's own: HF_TOKEN or
`hf auth login` — never an option, which a shell history, `ps` or a saved run file would keep. A push that fails
leaves the run whole and says how to push it later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._util.files import write_json
from ..inference.metrics import headline
from ..models.modeling import BitForImageClassification


class HubPushFailed(OSError):
    """The run finished and is saved, but its model did not reach the Hub; `metrics` are the run's final ones."""

    def __init__(self, message: str, metrics: dict[str, Any]):
        super().__init__(message)
        self.metrics = metrics


def check_hub_repo(repo_id: str | None) -> None:
    """Refuse a repo name the Hub would refuse, before the run starts rather than after it ends."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(
            f"--push-to-hub {repo_id!r} is not a Hub repo name ({error}): give NAME or OWNER/NAME."
        ) from None


def hub_token_found() -> bool:
    """Whether huggingface_hub has a token to push with (HF_TOKEN, or the one `hf auth login` saved)."""
    from huggingface_hub import get_token

    return get_token() is not None


def push_run(
    model: BitForImageClassification, folder: Path, metrics: dict[str, Any], repo_id: str, private: bool | None
) -> dict[str, Any]:
    """Upload the run's saved model `folder` (its card written for the repo) in one commit naming the run, and
    record the repo and the commit's URL in metrics.json beside the folder; raises HubPushFailed (metrics.json
    recording why) when it fails."""
    out = folder.parent
    evaluation = metrics.get("eval")
    scored = f", eval {headline(evaluation)} {evaluation[headline(evaluation)]:.4f}" if evaluation else ""
    steps = f"{metrics['steps']} step" + "s" * (metrics["steps"] != 1)
    message = f"bigtransfer run {out.name}: {steps} on {metrics['train_examples']} images{scored}"
    try:
        if not hub_token_found():
            raise OSError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
        url = model.push_to_hub(repo_id, commit_message=message, private=private, folder=folder)
    except OSError as error:
        why = error.__cause__ or error  # the Hub's own error, without the advice meant for a model object
        metrics = {**metrics, "push_to_hub": {"repo": repo_id, "error": f"{type(why).__name__}: {why}"}}
        write_json(out / "metrics.json", metrics)
        raise HubPushFailed(
            f"the run is saved ({folder}, {out / 'metrics.json'}) but the push to {repo_id!r} failed "
            f"({type(why).__name__}: {why}); push it later with `hf upload {repo_id} {folder}`.",
            metrics,
        ) from None
    metrics = {**metrics, "push_to_hub": {"repo": repo_id, "url": str(url)}}
    write_json(out / "metrics.json", metrics)
    return metrics
