"""Keep secrets (API keys, tokens) out of the database and files.

Secrets only ever come from environment variables. Before a config or message is stored,
``redact`` drops the value of every key that looks like a credential and replaces any
occurrence of a secret environment variable's value, wherever it hides (a nested dict,
a list, a URL, an error message).
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping

REDACTED = "<redacted>"

# A key name is a credential when one of its words (split on _ - . space) is one of these,
# or it contains "apikey"/"api_key"/"private_key". Plural "tokens" (max_tokens) is not one.
_SECRET_WORDS = {"secret", "token", "password", "passwd", "authorization", "credential", "credentials"}
_SECRET_FRAGMENTS = re.compile(r"api[_-]?key|private[_-]?key", re.IGNORECASE)

#: Environment variables always treated as secret (in addition to any whose name looks
#: like a credential, e.g. ``FOO_API_KEY``, ``GITHUB_TOKEN``).
DEFAULT_SECRET_ENV = ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "VLLM_API_KEY", "HF_TOKEN")

# Values this short are not replaced inside longer strings (a 1-character "secret" would
# otherwise shred every text); they are still redacted when a whole value equals them.
_MIN_SUBSTRING_LEN = 6


def secret_values(env_names: Iterable[str] = ()) -> list[str]:
    """Current values of the named environment variables plus every credential-looking one.

    Longest first, so a secret that contains another is replaced whole.
    """
    names = set(env_names) | set(DEFAULT_SECRET_ENV)
    names |= {name for name in os.environ if looks_like_secret_key(name)}
    values = {os.environ[name] for name in names if os.environ.get(name)}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced by ``<redacted>``."""
    for secret in secrets:
        if text == secret or (len(secret) >= _MIN_SUBSTRING_LEN and secret in text):
            text = text.replace(secret, REDACTED)
    return text


def redact(obj: Any, env_names: Iterable[str] = ()) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, scalars) that is safe to store.

    - a mapping value whose key looks like a credential (``api_key``, ``token``,
      ``OPENAI_API_KEY``, …) becomes ``"<redacted>"`` unless it is empty/None — the key
      stays so the config still shows that one was set;
    - any string equal to, or containing, the value of a secret environment variable
      (those in ``env_names``, ``DEFAULT_SECRET_ENV`` and every variable whose name looks
      like a credential) has that value replaced by ``"<redacted>"``.
    Keys whose name merely refers to a variable (``api_key_env = "OPENAI_API_KEY"``) are
    kept: naming the variable is not a secret.
    """
    return _redact(obj, secret_values(env_names))


def _redact(obj: Any, secrets: list[str]) -> Any:
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if looks_like_secret_key(str(key)) and not (value is None or (isinstance(value, str) and not value)):
                out[key] = REDACTED
            else:
                out[key] = _redact(value, secrets)
        return out
    if isinstance(obj, (list, tuple)):
        items = [_redact(v, secrets) for v in obj]
        return tuple(items) if type(obj) is tuple else items
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj


def looks_like_secret_key(key: str) -> bool:
    """True for names like ``api_key``, ``apiKey``, ``OPENAI_API_KEY``, ``hf_token``, ``password``.

    Names that merely point at a variable (``api_key_env``) and counts such as
    ``max_tokens`` are not secrets.
    """
    lowered = key.lower()
    if lowered.endswith(("_env", "_env_var", "_var")):
        return False
    if _SECRET_FRAGMENTS.search(lowered):
        return True
    return any(word in _SECRET_WORDS for word in re.split(r"[_\-. ]+", lowered))
