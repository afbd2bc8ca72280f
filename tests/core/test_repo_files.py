"""repo_files: the one rule for which files of a model repo or folder travel with the quantized copy."""

from __future__ import annotations

from ptq_core.repo_files import duplicate_weight_files, select_repo_files

REPO = [
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "chat_template.jinja", "modeling_custom.py", "LICENSE", "NOTICE.txt", "USE_POLICY.md", "README.md",
    ".gitattributes", "pytorch_model.bin", "pytorch_model.bin.index.json", "model.gguf", "tf_model.h5",
    "original/consolidated.00.pth", "original/params.json", "onnx/model.onnx", "onnx/config.json",
    "1_Pooling/config.json", "2_Normalize/.keep", "additional_chat_templates/tool.jinja", ".cache/x.json",
    "image.png",
]


def test_the_copy_keeps_safetensors_configs_tokenizer_code_and_licenses():
    assert select_repo_files(REPO) == [
        "1_Pooling/config.json", "LICENSE", "NOTICE.txt", "USE_POLICY.md", "additional_chat_templates/tool.jinja",
        "chat_template.jinja", "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "modeling_custom.py",
        "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
    ]


def test_weights_in_other_formats_and_their_folders_never_travel():
    assert sorted(duplicate_weight_files(REPO)) == sorted([
        "pytorch_model.bin", "model.gguf", "tf_model.h5", "original/consolidated.00.pth", "original/params.json",
        "onnx/model.onnx", "onnx/config.json"])
    kept = set(select_repo_files(REPO))
    assert not kept & set(duplicate_weight_files(REPO))


def test_the_rule_is_case_insensitive_and_order_free():
    assert select_repo_files(["Config.JSON", "MODEL.SAFETENSORS", "Readme.md"]) == ["Config.JSON", "MODEL.SAFETENSORS"]
    assert select_repo_files(reversed(REPO)) == select_repo_files(REPO)
