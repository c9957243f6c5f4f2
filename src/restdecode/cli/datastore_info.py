"""Print a datastore file's header and size facts (opening it costs nothing, whatever its size).

examples:
  restdecode datastore-info chat.rds
  restdecode datastore-info chat.rds --verify      # also re-check every section's checksum
  restdecode datastore-info chat.rds --json
"""

from __future__ import annotations

import argparse
import json


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``datastore-info`` arguments."""
    parser.add_argument("file", help="datastore file (.rds)")
    parser.add_argument("--verify", action="store_true",
                        help="read the whole file and check the section checksums")
    parser.add_argument("--json", action="store_true", help="print the facts as one JSON object")


def run(args: argparse.Namespace) -> int:
    """Open the file (raising a clear error if damaged) and print what it holds."""
    from dataclasses import asdict

    from restdecode.datastore import Datastore

    with Datastore.open(args.file) as store:
        if args.verify:
            store.verify()
        facts = datastore_facts(store) | {"header": asdict(store.header)}
        if args.verify:
            facts["checksums"] = "ok"
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print(format_facts(facts))
    return 0


def datastore_facts(store) -> dict:
    """Size facts of an opened datastore."""
    header, sections = store.header, store.sections
    section_bytes = {name: section["count"] * int(section["dtype"][-1]) for name, section in sections.items()}
    return {
        "file": str(store.path),
        "file_bytes": store.file_size,
        "bytes_per_token": round(store.bytes_per_token, 3),
        "mean_document_tokens": round(header.num_tokens / max(1, header.num_documents), 1),
        "section_bytes": section_bytes,
        "section_dtypes": {name: section["dtype"] for name, section in sections.items()},
    }


def format_facts(facts: dict) -> str:
    """Human-readable lines."""
    header = facts["header"]
    lines = [
        f"file:              {facts['file']}",
        f"format version:    {header['format_version']}",
        f"source:            {header['source']}",
        f"built:             {header['build_time']} in {header['build_seconds']:.1f} s",
        f"tokenizer:         {header['tokenizer_name']} ({header['tokenizer_fingerprint']})",
        f"vocabulary:        {header['vocab_size']:,} tokens, stored as u{8 * header['token_width']}",
        f"documents:         {header['num_documents']:,} (mean {facts['mean_document_tokens']:,} tokens)",
        f"tokens:            {header['num_tokens']:,}",
        f"file size:         {facts['file_bytes']:,} bytes ({facts['file_bytes'] / 2**20:,.1f} MiB), "
        f"{facts['bytes_per_token']:.2f} bytes/token",
    ]
    for name, size in facts["section_bytes"].items():
        lines.append(f"  {name + ':':<17}{size:,} bytes ({facts['section_dtypes'][name]})")
    if header.get("timings"):
        lines.append("build time:        " + ", ".join(f"{k} {v:.1f} s" for k, v in header["timings"].items()))
    if header.get("source_stats"):
        stats = {k: v for k, v in header["source_stats"].items() if k != "roots"}
        lines.append("source stats:      " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    if "checksums" in facts:
        lines.append(f"checksums:         {facts['checksums']}")
    return "\n".join(lines)
