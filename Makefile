# The user interface. Every target bootstraps .venv when it is missing or stale.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
OUT     ?= work/demo
DATASET ?= demo
# test processes (pytest-xdist); a test file runs whole in one of them, so its module fixtures are built once
TEST_WORKERS ?= 2

.PHONY: setup shards test bench bench-scale report train clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; a complete .venv makes this a no-op.
# vggsounder (`evaluate --vggsounder`) is a labels-only wheel (its CSV): --no-deps, because it declares
# `datasets`, used only by its optional sample download, heavy and with its own fsspec pins.
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev]'
	$(VPY) -m pip install -q --no-deps vggsounder==1.0
	touch $(STAMP)

# Each variable is a row of curation/run_options.py, which builds the flags (tests/curation/test_run_options.py
# checks this recipe and README's list against it).
shards: $(STAMP)
	$(VPY) -m curation run --dataset $(DATASET) --out $(OUT) \
		$(if $(META),--meta $(META)) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) \
		$(if $(SOURCE),--source '$(SOURCE)') \
		$(if $(CONFIG),--config $(CONFIG)) $(if $(WORKERS),--workers $(WORKERS)) \
		$(if $(CLIPS),--demo-clips $(CLIPS)) $(if $(PRESET),--demo-preset $(PRESET)) \
		$(if $(SCORER),--scorer $(SCORER)) \
		$(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(if $(CHECKPOINT_FORMAT),--checkpoint-format $(CHECKPOINT_FORMAT)) \
		$(if $(MOMENTS),--moments $(MOMENTS)) $(if $(filter 1 yes true,$(DEBUG)),--debug) \
		$(if $(LABEL_MAP),--label-map $(LABEL_MAP)) $(if $(COOKIES),--cookies $(COOKIES)) \
		$(if $(PROXY),--proxy $(PROXY)) $(if $(PER_HOST),--per-host $(PER_HOST)) \
		$(if $(RATE_LIMIT),--rate-limit $(RATE_LIMIT)) $(if $(SOCKET_TIMEOUT),--socket-timeout $(SOCKET_TIMEOUT)) \
		$(if $(RETRIES),--fetch-retries $(RETRIES)) $(if $(STOP_AFTER),--stop-after $(STOP_AFTER)) \
		$(if $(filter 1 yes true,$(RETRY_FAILED)),--retry-failed)

test: $(STAMP)
	$(VPY) -m ruff check curation manifests training tests bench
	$(VPY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

bench: $(STAMP)
	$(VPY) -m bench.curation --out work/bench
	$(VPY) -m bench.mirror --out work/bench
	$(VPY) -m bench.ssl --out work/bench
	$(VPY) -m bench.ssl_train --out work/bench
	$(VPY) -m bench.ssl_train --model full --out work/bench
	$(VPY) -m bench.ssl --model full --out work/bench
	$(VPY) -m bench.fetch --out work/bench
	$(VPY) -m bench.quality --out work/bench

# 1k / 5k / 20k tiny clips: client and worker peak RSS, clips/s, and the write wave on 1 vs 2 workers (~30 min)
bench-scale: $(STAMP)
	$(VPY) -m bench.scale --out work/bench

report: $(STAMP)
	$(VPY) -m curation report --out $(OUT)

# make train: SHARDS = shard folder, glob, brace pattern or URL(s) (default: the demo shards, built first when
# missing); the output folder is OUT when given on the command line, else TRAIN_OUT (default work/demo/train).
# TRAIN_CONFIG = a TOML config (default: the CPU demo setting), SWAV = swav.pth.tar weights for stage 1.
SHARDS    ?= work/demo/shards
TRAIN_OUT ?= $(if $(filter command line,$(origin OUT)),$(OUT),work/demo/train)

train: $(STAMP)
	@if [ '$(SHARDS)' = work/demo/shards ] && [ ! -d work/demo/shards ]; then $(MAKE) shards OUT=work/demo; fi
	$(VPY) -m training all --shards '$(SHARDS)' --out '$(TRAIN_OUT)' \
		$(if $(TRAIN_CONFIG),--config '$(TRAIN_CONFIG)') $(if $(SWAV),--swav-weights '$(SWAV)')

clean:
	rm -rf work
