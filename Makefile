# mawstron: `make test` and `make demo` work on a fresh machine; both build .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and on its own, so that no dependency ever makes pip resolve another build.
# On a CPU machine 2.13.0 is the CPU wheel; on a GPU cluster pass the build you want, e.g. TORCH=torch==2.13.0.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
STAMP := $(VENV)/.installed-stamp
# DeepSpeed JIT-builds C++ ops on first use; keep the build with this venv so that another checkout's venv
# (different include paths) never invalidates it.
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: install test demo study clean

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,plot,data]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The MAWS recipe in miniature on two ranks (CPU ranks over gloo when there is no GPU): a synthetic web-image
# collection as JPEG webdataset shards and its hashtag vocabulary, MAE on it, then WSP initialised from it
# (both read the shards through DALI), then the encoder consolidated into one timm-layout file, then LiT on the
# frozen encoder and a zero-shot evaluation.
DEMO_DIR ?= runs/demo
DEMO_DATA ?= $(DEMO_DIR)/data
# fp32 because most CPUs have no native bf16 matmul (10x slower than fp32 on the 2-core CI machine); on GPUs
# use DEMO_PRECISION=bf16, the recipes' default
DEMO_PRECISION ?= $(shell $(BIN)/python -c "import torch; print('bf16' if torch.cuda.is_available() else 'fp32')" 2>/dev/null || echo fp32)
DEMO_SHARDS := --set parallel.precision=$(DEMO_PRECISION) --set data.source=shards --set 'data.shards=$(DEMO_DATA)/train-*.tar' \
	--set data.vocab=$(DEMO_DATA)/vocab.json
# LiT on the frozen WSP encoder, then zero-shot on the 15 held-out classes (the MAWS-CLIP stage in miniature)
DEMO_LIT_STEPS ?= 100
demo: $(STAMP)
	$(BIN)/mawstron data synth --out $(DEMO_DATA) --images 2000 --size 32 --overwrite
	$(BIN)/mawstron data vocab --shards '$(DEMO_DATA)/train-*.tar' --min-count 5 \
		--synonyms $(DEMO_DATA)/synonyms.json --out $(DEMO_DATA)/vocab.json
	$(BIN)/mawstron train recipes/vit_tiny_mae.py --gpus 2 --overwrite --set output_dir=$(DEMO_DIR)/mae $(DEMO_SHARDS)
	$(BIN)/mawstron train recipes/vit_tiny_wsp.py --gpus 2 --overwrite --set output_dir=$(DEMO_DIR)/wsp $(DEMO_SHARDS) \
		--set checkpoint.init_from=$(DEMO_DIR)/mae/checkpoints
	$(BIN)/mawstron consolidate --checkpoint $(DEMO_DIR)/wsp/checkpoints --keep-head --out $(DEMO_DIR)/vit_tiny_maws.safetensors
	$(BIN)/mawstron train recipes/vit_tiny_lit.py --gpus 2 --overwrite --set output_dir=$(DEMO_DIR)/lit $(DEMO_SHARDS) \
		--set checkpoint.init_from=$(DEMO_DIR)/wsp/checkpoints --set train.steps=$(DEMO_LIT_STEPS)
	$(BIN)/mawstron eval --zero-shot --checkpoint $(DEMO_DIR)/lit/checkpoints --data $(DEMO_DATA)
	@echo "demo done:"
	@echo "  data              $(DEMO_DATA) (train-*.tar, eval-{train,test}-*.tar, vocab.json)"
	@echo "  MAE metrics       $(DEMO_DIR)/mae/metrics.jsonl   checkpoints $(DEMO_DIR)/mae/checkpoints"
	@echo "  WSP metrics       $(DEMO_DIR)/wsp/metrics.jsonl   checkpoints $(DEMO_DIR)/wsp/checkpoints"
	@echo "  encoder + head    $(DEMO_DIR)/vit_tiny_maws.safetensors (timm keys)"
	@echo "  LiT (zero-shot)   $(DEMO_DIR)/lit/metrics.jsonl   checkpoints $(DEMO_DIR)/lit/checkpoints (+ tokenizer.json)"

# The MAWS study in miniature on the named-things scene (MAE vs WSP vs MAE -> WSP at 25/100% of the WSP steps, a second
# model width, short fine-tuning, LiT + zero-shot; linear probe, head/tail classes, k-shot; mean +- std over SEEDS
# seeds, and the paper's orderings tested): benchmarks/results/study.*
STUDY_ARGS ?=
SEEDS ?= 3
study: $(STAMP)
	$(BIN)/python benchmarks/study.py --results benchmarks/results --seeds $(SEEDS) $(STUDY_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache runs
