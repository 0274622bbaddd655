"""The Hugging Face hub, where a command reads from it: reachable, or one line saying what to use instead.

A build touches the hub for ``hf://`` sources, a tokenizer named by its hub repository and
the GlotLID model; ``mmbert-train export`` for a tokenizer named by its hub repository.
Unreachable, each request would cost huggingface_hub's timeouts and retries and end in a
long traceback; so the command asks once, up front, and stops with :class:`HubUnavailable`,
whose message names the local alternative (``mmbert-data download`` + ``--input-root``,
``--tokenizer PATH``, ``--lid-model PATH``). Both sides use it, so it lives in the contract.
"""

from __future__ import annotations

import urllib.error
import urllib.request

# One HEAD request to the hub's endpoint decides; a hub that answers at all answers well within this.
PROBE_TIMEOUT_S = 5


class HubUnavailable(RuntimeError):
    """Something a command needs is on the Hugging Face hub, and the hub cannot be reached."""


def unreachable_reason() -> str | None:
    """Why the hub cannot be reached now (``HF_HUB_OFFLINE``, or no answer from its endpoint), or None.

    The probe goes through urllib, so it honours the same proxy variables as huggingface_hub.
    """
    from huggingface_hub import constants  # here, so that importing this module stays light

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # an HTTP status, whatever it is, is an answer
    except OSError as err:  # no route, refused, timed out, name not resolved
        return f"{constants.ENDPOINT} cannot be reached ({getattr(err, 'reason', err)})"
    return None


def hub_unavailable(action: str, reason: str, way_out: str) -> HubUnavailable:
    """The one-line error for an ``action`` that needs the hub, unreachable for ``reason``."""
    return HubUnavailable(f"{action} needs the Hugging Face hub, but {reason}; {way_out}")
