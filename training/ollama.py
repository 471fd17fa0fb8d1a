"""An Ollama Modelfile for an exported GGUF file: ``FROM ./file.gguf``, the chat template as Ollama's Go
template where it is a known one (ChatML: the demo model's, SmolLM2's, Qwen2's; Llama 3's), and a stop
parameter for each end-of-turn token.

    text = modelfile("km-v2-f16.gguf", tokenizer.chat_template, stops=["<|im_end|>"])
    (out / "Modelfile").write_text(text)        # then: ollama create km -f Modelfile

A template that is not a known one is not guessed at: it is left out (Ollama then reads the one embedded in
the GGUF file) and quoted in comments, so a user can translate it by hand.
"""

from __future__ import annotations

CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""

# marker tokens -> (template name, Go template, the stop tokens it implies)
KNOWN_TEMPLATES = (
    (("<|im_start|>", "<|im_end|>"), "chatml", CHATML, ("<|im_end|>", "<|im_start|>")),
    (("<|start_header_id|>", "<|eot_id|>"), "llama3", LLAMA3, ("<|eot_id|>", "<|start_header_id|>")),
)


def template_kind(chat_template: str | None) -> str | None:
    """ "chatml", "llama3", or None when the Jinja template is not one of those (or there is none)."""
    for markers, name, _, _ in KNOWN_TEMPLATES:
        if chat_template and all(m in chat_template for m in markers):
            return name
    return None


def modelfile(gguf_name: str, chat_template: str | None, stops: list[str] | tuple[str, ...] = ()) -> str:
    """The Modelfile text for ``gguf_name`` (a file beside it) with ``chat_template`` translated when known
    and ``stops`` (e.g. the end-of-sequence token) as stop parameters."""
    lines = [
        "# Ollama Modelfile written by `tunehub adapters export --format gguf`",
        "# usage: ollama create NAME -f Modelfile && ollama run NAME",
        f"FROM ./{gguf_name}",
        "",
    ]
    stop_tokens = list(dict.fromkeys(s for s in stops if s))
    kind = template_kind(chat_template)
    for _, name, go_template, implied in KNOWN_TEMPLATES:
        if name == kind:
            lines.append(f"# the model's chat template ({name}) in Ollama's Go template language")
            lines.append(f'TEMPLATE """{go_template}"""')
            stop_tokens += [s for s in implied if s not in stop_tokens]
            break
    else:
        if chat_template:
            lines.append(
                "# The model's chat template is not one this export translates; Ollama reads the one"
            )
            lines.append("# embedded in the GGUF file (tokenizer.chat_template). The Jinja original:")
            lines += [f"#   {line}" for line in chat_template.splitlines()]
        else:
            lines.append("# The model has no chat template: prompts are sent as plain text.")
    lines.append("")
    lines += [f'PARAMETER stop "{s}"' for s in stop_tokens]
    return "\n".join(lines) + "\n"
