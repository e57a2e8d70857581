# Two commands matter on a fresh machine: `make up` and `make test` (see README).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GEN := gen/python
PROTOS := $(shell find protos -name '*.proto')
LOCAL_PACKAGES := libs/resilience libs/meshkit libs/meshctl services/inventory services/payment services/order \
	services/notification
VENV_STAMP := $(VENV)/.installed
GEN_STAMP := $(GEN)/.generated
BUF := node_modules/.bin/buf

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(VENV_STAMP): requirements.txt $(addsuffix /pyproject.toml,$(LOCAL_PACKAGES))
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt $(addprefix -e ,$(LOCAL_PACKAGES))
	@touch $@

# Generated code lives in one git-ignored place; a .pth file puts it on the venv's path.
$(GEN_STAMP): $(PROTOS) $(VENV_STAMP)
	rm -rf $(GEN) && mkdir -p $(GEN)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN) --mypy_out=$(GEN) \
		--grpc_python_out=$(GEN) --mypy_grpc_out=$(GEN) $(PROTOS)
	$(PY) -c 'import site,os; open(os.path.join(site.getsitepackages()[0], "mesh_gen.pth"), "w").write(os.path.abspath("$(GEN)") + "\n")'
	@touch $@

.PHONY: venv gen
venv: $(VENV_STAMP) ## create .venv with every dependency
gen: $(GEN_STAMP) ## generate Python code from protos/

# Debian's prometheus packages start a service of their own when installed (Prometheus on
# :9090, the exporter on :9121: the ports the stack's own take). Those this target installs are
# stopped and disabled through the invoke-rc.d that started them; installs it did not make, and
# the stack's own processes (root's, not the prometheus user's), are left alone.
SERVICE_PACKAGES := prometheus prometheus-redis-exporter

.PHONY: system-deps
system-deps: ## install Debian packages that are missing (redis-server, prometheus, its Redis exporter)
	@missing=; for package in redis-server $(SERVICE_PACKAGES); do \
		command -v $$package >/dev/null || missing="$$missing $$package"; done; \
	test -z "$$missing" || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing && \
		for package in $$missing; do case " $(SERVICE_PACKAGES) " in *" $$package "*) \
			invoke-rc.d $$package stop || true; update-rc.d $$package disable; esac; done; }

.PHONY: setup
setup: system-deps venv gen

.PHONY: up down status logs canary
up: setup ## set up what is missing, launch the mesh, wait until healthy
	$(PY) -m meshctl up
down: ## stop everything `make up` started
	@if test -x $(PY); then $(PY) -m meshctl down; fi
status: ## show every process of the stack and its health
	$(PY) -m meshctl status
logs: ## tail the logs of every process (LINES=n)
	$(PY) -m meshctl logs

.PHONY: canary
canary: ## move the payment canary weights live: make canary V1=50 V2=50
	$(PY) -m meshctl canary $(V1) $(V2)

.PHONY: replay-dead-letters
replay-dead-letters: gen ## put the notification service's dead letters back on the order events stream
	$(PY) -m notification_service replay-dead-letters

# Faults on the internal hop (Envoy's fault filter) or inside payment's servers, live. In
# `make fault clear`, clear is a second goal: the command's word, and a no-op of its own.
.PHONY: fault
fault: ## faults live: make fault TARGET=payment_v2 ABORT=20 CODE=UNAVAILABLE | DELAY_MS=800 PERCENT=50 [AT=server]; make fault clear; alone, lists them
	@$(PY) -m meshctl fault $(filter clear,$(MAKECMDGOALS)) $(if $(TARGET),--target '$(TARGET)') \
		$(if $(ABORT),--abort '$(ABORT)') $(if $(CODE),--code '$(CODE)') \
		$(if $(DELAY_MS),--delay-ms '$(DELAY_MS)') $(if $(PERCENT),--percent '$(PERCENT)') \
		$(if $(AT),--at '$(AT)')
ifneq ($(filter fault,$(MAKECMDGOALS)),)
.PHONY: clear
clear:
	@:
endif

# Payment v2 step by step (ROLLOUT_STEPS), checked on Prometheus every ROLLOUT_INTERVAL_S:
# exit 0 promoted to 100%, 3 rolled back to 0%. It judges calls, so it needs load (make load).
.PHONY: rollout
rollout: ## progressive delivery of payment v2, promoted or rolled back on its metrics: make rollout INTERVAL=10 STEPS=10,20,30,50 (needs load)
	@$(if $(INTERVAL),ROLLOUT_INTERVAL_S='$(INTERVAL)') $(if $(STEPS),ROLLOUT_STEPS='$(STEPS)') \
		$(PY) -m meshctl rollout

# Jaeger and Grafana come from Docker, for those who have it; the mesh itself never needs it.
# Docker Desktop forwards host.docker.internal to the host's loopback, where the mesh listens;
# a Linux engine's bridge does not, so there Grafana shares the host's network
# (deploy/compose/compose.yaml says more).
OBSERVE_COMPOSE := deploy/compose/compose.yaml
NEED_DOCKER = command -v docker >/dev/null 2>&1 || { echo "make $@ needs Docker with Compose v2" \
	"(docker compose), which starts Jaeger and Grafana; the mesh runs without it (make up)" >&2; exit 1; }

.PHONY: observe observe-down
observe: ## Jaeger and Grafana in Docker, reading the running mesh (make observe-down stops them)
	@$(NEED_DOCKER)
	@engine=$$(docker info --format '{{.OperatingSystem}}') || { echo "make observe: the" \
		"Docker daemon does not answer (docker info failed)" >&2; exit 1; }; \
	case "$$(uname -s) $$engine" in Darwin*|*"Docker Desktop"*) profile=docker-desktop;; \
		*) profile=linux-engine;; esac; \
	docker compose -f $(OBSERVE_COMPOSE) --profile $$profile up -d && \
	echo "Grafana http://127.0.0.1:3000  Jaeger http://127.0.0.1:16686 ($$profile);" \
		"traces: make down && OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 make up"
observe-down: ## stop what `make observe` started
	@$(NEED_DOCKER)
	docker compose -f $(OBSERVE_COMPOSE) --profile '*' down

.PHONY: test test-fast
test: setup ## set up and run the whole suite
	$(PY) -m pytest
# The fast lane: everything but the tests that start a whole mesh (marked stack).
test-fast: setup ## the suite without the whole-mesh tests (about a minute)
	$(PY) -m pytest -m "not stack"

.PHONY: bench
bench: setup ## run the benchmarks under bench/
	$(PY) -m bench

# Locust against the running mesh (load/): its web UI on 127.0.0.1:LOAD_WEB_PORT, or with
# HEADLESS=1 a run of DURATION (default 60s) writing CSV statistics to var/load/.
USERS ?= 10
RATE ?= 5
PACE ?= 1
DURATION ?=
LOAD_WEB_PORT ?= 8089
.PHONY: load
load: venv gen ## Locust's shoppers on the running mesh (USERS, RATE users/s, PACE tasks/s, DURATION, HEADLESS=1)
	$(PY) -m load --users $(USERS) --spawn-rate $(RATE) --pace $(PACE) --web-port $(LOAD_WEB_PORT) \
		$(if $(DURATION),--run-time $(DURATION)) $(if $(HEADLESS),--headless)

# The fault matrix on two real stacks, the order service's policy against a plain deadline;
# writes var/chaos/<UTC time>/report.md with its PNG plots (QUICK=1: the transient fault only).
.PHONY: chaos
chaos: venv gen ## fault matrix, resilience.yaml vs a plain deadline: report + plots in var/chaos/ (QUICK=1: ~1 min)
	$(PY) -m bench.chaos $(if $(QUICK),--quick)

$(BUF): package.json
	npm install --silent --no-audit --no-fund
	@touch $@

.PHONY: lint
lint: setup $(BUF) ## ruff, mypy strict on libs and services, buf lint on protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	cd protos && ../$(BUF) lint

.PHONY: fmt
fmt: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: clean
clean: down
	rm -rf $(VENV) gen var node_modules
