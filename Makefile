# vublk — the two commands a new user needs are `make run` and `make test`.
SHELL := /bin/bash
NPM ?= npm

.PHONY: setup deps build run test test-unit test-integration test-guest guest fuzz bench bench-deps install-vhost-user-json clean

## Install system packages (qemu, fio, busybox) and npm packages, then build the addon and TypeScript.
setup: deps build

deps:
	scripts/install-deps.sh

node_modules/.package-lock.json: package.json package-lock.json
	$(NPM) ci --no-audit --no-fund
	@touch $@

build: node_modules/.package-lock.json
	$(NPM) run build

## Serve the default 1 GiB sparse image on ./vublk.sock and print the QEMU command line.
run: setup
	bin/vublk serve

## Build the test guest (cached outside the repo) and run every test: unit, integration, guest.
test: setup guest
	scripts/run-tests.sh

test-unit: build
	$(NPM) run test:unit

test-integration: build
	$(NPM) run test:integration

test-guest: build guest
	$(NPM) run test:guest

guest:
	scripts/build-guest.sh

## Fuzz the data path and the vhost-user codec with the unit tests' properties for FUZZ_SECONDS
## (default 600) from a random seed; replay a failure with the FUZZ_ARGS it prints, e.g.
## make fuzz FUZZ_ARGS='--only hostile-queue --seed S --path P'.
FUZZ_SECONDS ?= 600
fuzz: build
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh $(FUZZ_ARGS)

## Benchmark vublk against qemu-storage-daemon in three layers (about 25 minutes on 2 cores);
## writes docs/benchmarks.md, .json and -iops-qd.png. Options go in BENCH_ARGS, e.g.
## make bench BENCH_ARGS='--quick', BENCH_ARGS='--layers driver --storage tmpfs', BENCH_ARGS='--help'.
bench: bench-deps build guest
	BENCH_COMMAND="make bench$(if $(BENCH_ARGS), BENCH_ARGS='$(BENCH_ARGS)')" scripts/bench/run.sh $(BENCH_ARGS)

bench-deps:
	scripts/install-deps.sh --bench

## Install the vhost-user back-end description (type "block") for QEMU/libvirt discovery.
VHOST_USER_JSON_DIR ?= /usr/share/qemu/vhost-user
install-vhost-user-json: build
	scripts/vhost-user/install-description.sh $(VHOST_USER_JSON_DIR)

clean:
	rm -rf dist native/build
