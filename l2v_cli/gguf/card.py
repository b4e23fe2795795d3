"""Model-card text for GGUF exports: what the files are and how to serve them with llama.cpp.

Every command shown here is run by tests/test_gguf_llamacpp.py (the slow lane).
"""

from __future__ import annotations

from pathlib import Path

from l2v_cli.gguf.llamacpp import LLAMA_CPP_VERSION, SERVED_POOLING


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _files_table(report) -> list[str]:
    lines = ["| file | type | size | llama.cpp pooling | attention | tokenizer (pre) | tokenization check |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for info in report.files:
        lines.append(f"| `{info.path.name}` | {info.gguf_type} | {_mb(info.bytes)} | "
                     f"{SERVED_POOLING[info.pooling]} | {'causal' if info.causal else 'non-causal'} | "
                     f"{info.tokenizer_pre} | {report.token_check.get(info.path.name, '-')} |")
    return lines


def card_section(report, folder: Path, level: str = "##") -> str:
    """The "llama.cpp" section: files, serve commands, the instruction caveat."""
    first = report.files[0]
    name = first.path.name
    pool = SERVED_POOLING[first.pooling]
    lines = [f"{level} llama.cpp (GGUF)", ""]
    lines += _files_table(report) + [""]
    lines += ["The GGUF records non-causal attention (`" + first.arch + ".attention.causal = false`) and the "
              f"pooling (`{first.arch}.pooling_type`), so llama.cpp runs it as this encoder without extra flags "
              f"(llama.cpp from llama-cpp-python {LLAMA_CPP_VERSION} on; older builds ignore the causal key for "
              "decoder architectures and would run it causal)."]
    if first.scaled:
        lines += ["The export's per-dimension scale (`2_Dense`) is folded into the final norm's weight "
                  "(`output_norm.weight`), so llama.cpp's vectors come out scaled with no step of yours."]
    lines.append("")
    if first.sink_ids:
        ids = ", ".join(str(i) for i in first.prefix_ids)
        lines += [f"**The attention sink.** Every text this encoder embeds starts with the token ids `[{ids}]` "
                  f"({'BOS, then ' if first.add_bos else ''}the sink the conversion gave it: "
                  f"`l2v.sink_token_ids`). llama.cpp adds at most BOS to a plain string, so send each input as a "
                  "token-id prompt — those ids, then the text"
                  + (f", then `{first.suffix_ids[0]}` (EOS: llama-server adds it only to a prompt that starts "
                     "with text)" if first.suffix_ids else "")
                  + " — and llama-server returns exactly this encoder's "
                  "embedding. **A plain string is embedded without the sink and gives a different, much worse "
                  "vector** (cosine 0.25 to the right one on the demo model: docs/gguf.md). For the same "
                  "reason `llama-embedding`, which takes plain text only, does not serve this file.", ""]
    lines += ["Serve it (OpenAI-compatible `/v1/embeddings`):", "", "```bash",
              f"llama-server -m {name} --embeddings --pooling {pool} --port 8080"]
    if first.sink_ids:
        ids = ", ".join(str(i) for i in first.prefix_ids)
        end = "".join(f", {i}" for i in first.suffix_ids)
        lines += ["curl -s http://127.0.0.1:8080/v1/embeddings -H 'Content-Type: application/json' \\",
                  f"     -d '{{\"input\": [[{ids}, \"a sentence\"{end}], [{ids}, \"another one\"{end}]]}}'"]
    else:
        lines += ["curl -s http://127.0.0.1:8080/v1/embeddings -H 'Content-Type: application/json' \\",
                  "     -d '{\"input\": [\"a sentence\", \"another one\"]}'"]
    lines += ["```", "", "llama-server does not truncate: an input longer than its batch (`-ub`, 512 tokens by "
              "default) is refused, so cut texts to the encoder's max_seq_length on the client.", ""]
    if not first.sink_ids:
        lines += ["One-off from the shell:", "", "```bash",
                  f"llama-embedding -m {name} --pooling {pool} -p 'a sentence' --embd-output-format json", "```", "",
                  "(llama-embedding prints through llama.cpp's logger thread, which can lose the output at exit: "
                  "a run with exit code 0 and nothing on stdout is that; run it again.)", ""]
    lines += ["**Instructions.** llama.cpp's mean pooling averages every token, the instruction's too; this "
              "encoder (like `l2v encode --instruction`) pools only the text. For texts without an instruction "
              "the served embeddings equal the encoder's" + (" (sent with the ids above)" if first.sink_ids else "")
              + ". With an instruction, run llama.cpp with `--pooling none` and pool on the client over the text "
              "positions: see `docs/gguf.md` (script `docs/gguf_instruction_pooling.py`), or evaluate with "
              "`l2v eval " + name + "`, which does exactly that.", ""]
    return "\n".join(lines)


def gguf_card(report, folder: Path, source: Path) -> str:
    """README.md of a GGUF-only export folder."""
    first = report.files[0]
    lines = ["---", "library_name: gguf", "pipeline_tag: sentence-similarity", "tags:", "- gguf", "- llama.cpp",
             "- llm2vec", "- l2v", "---", "", f"# {report.out.name}", "",
             f"A text encoder made with the LLM2Vec method by `l2v`, exported from `{source}` as GGUF for llama.cpp "
             f"(architecture `{first.arch}`, pooling `{first.pooling}`).", ""]
    lines.append(card_section(report, folder))
    return "\n".join(lines) + "\n"
