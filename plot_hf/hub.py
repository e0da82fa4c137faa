"""Hub access checks: fail before any training when ``push_to_hub`` cannot work."""

from __future__ import annotations

import logging

from huggingface_hub import constants, whoami
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

logger = logging.getLogger(__name__)


class HubUnavailableError(RuntimeError):
    """``push_to_hub`` was asked for but the Hub cannot be reached or the user is not logged in."""


def check_hub_access(repo_id: str) -> None:
    """Raise :class:`HubUnavailableError` now, rather than after training, when pushing to ``repo_id`` will fail.

    Checks offline mode (``HF_HUB_OFFLINE``), that the Hub answers, and that a token is configured.
    """
    advice = (
        f"`push_to_hub` is true (repo {repo_id!r}) but {{why}}. Nothing was trained or written. Log in with "
        "`hf auth login` and check the network, or set `push_to_hub: false` (the output folder keeps the model, "
        "card and metrics; push it later with `huggingface_hub.upload_folder`), or set `hub_allow_offline: true` "
        "to train now and skip the upload."
    )
    if constants.HF_HUB_OFFLINE:
        raise HubUnavailableError(advice.format(why="HF_HUB_OFFLINE is set"))
    try:
        whoami()
    except OfflineModeIsEnabled as error:
        raise HubUnavailableError(advice.format(why="offline mode is enabled")) from error
    except HfHubHTTPError as error:
        raise HubUnavailableError(advice.format(why=f"the Hub refused the token ({error})")) from error
    except (OSError, ValueError) as error:  # connection errors, no token
        raise HubUnavailableError(advice.format(why=f"the Hub is unreachable or no token is set ({error})")) from error
