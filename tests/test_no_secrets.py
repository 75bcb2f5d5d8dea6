"""Nothing secret is committed: no private keys, tokens, passwords or ``.env`` files.

Scans every file git tracks (or would track: untracked, not ignored) for the shapes of
real secrets. Test fixtures that need keys or passwords generate them at run time.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Built from pieces so that this file does not match itself.
_BEGIN = "-----" + "BEGIN"
PATTERNS = {
    "private key": re.compile(_BEGIN + r" (?:[A-Z]+ )?PRIVATE KEY-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "PurpleAir-style API key": re.compile(r"(?i)x-api-key['\"]?\s*[:=]\s*['\"][0-9A-F-]{30,}"),
}
URL_PASSWORD = re.compile(r"\b(?:mqtts?|https?)://[^\s:/@'\"\[]+:([^\s@'\"/]+)@")
PLACEHOLDERS = {"password", "p%40ss", "pw", "***", "wrong", "x"}  # docs, doctests, test cases
SECRET_ASSIGNMENT = re.compile(r"(?im)^\s*([A-Z_]*(?:PASSWORD|SECRET|TOKEN|API_KEY))\s*=\s*(\S+)")
KEY_FILES = (".pem", ".key", ".p12", ".pfx", ".crt", ".der")


def tracked_files() -> list[Path]:
    try:
        cmd = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / name for name in out.decode().split("\0") if name]


def test_no_secret_shapes_in_any_file() -> None:
    hits = []
    for path in tracked_files():
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore")
        hits += [f"{path.relative_to(REPO)}: {what}" for what, rx in PATTERNS.items()
                 if rx.search(text)]  # fmt: skip
        urls = [pw for pw in URL_PASSWORD.findall(text)
                if pw not in PLACEHOLDERS and not pw.startswith("{")]  # fmt: skip
        hits += [f"{path.relative_to(REPO)}: password in a URL"] * bool(urls)
    assert not hits, "possible secrets committed:\n" + "\n".join(hits)


def test_no_key_files_and_no_env_file() -> None:
    names = [p.relative_to(REPO) for p in tracked_files()]
    assert not [n for n in names if n.suffix in KEY_FILES], "key or certificate files committed"
    assert Path(".env") not in names, ".env holds secrets: it must stay untracked"


def test_example_env_leaves_every_secret_blank() -> None:
    example = (REPO / ".env.example").read_text()
    secrets = SECRET_ASSIGNMENT.findall(example)
    assert secrets, "the example names the secrets it needs"
    assert all(value.startswith("#") for _, value in secrets), secrets


def test_the_scanner_finds_what_it_looks_for() -> None:
    samples = {
        "private key": _BEGIN + " RSA PRIVATE KEY-----\nMIIE...",
        "AWS access key id": "aws_key = AKIA" + "ABCDEFGHIJKLMNOP",
        "GitHub token": "token: ghp_" + "a" * 36,
    }
    for what, text in samples.items():
        assert PATTERNS[what].search(text), what
    assert URL_PASSWORD.findall("mqtt://edge:" + "hunter22@broker:1883") == ["hunter22"]
    assert not URL_PASSWORD.findall("mqtt://edge@broker:1883 mqtt://[user:password@]host")
