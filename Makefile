# Stello: the two commands of the README, plus the checks CI runs.
GO ?= go

.PHONY: run test fuzz vet staticcheck build

# How much `make test` fuzzes each fuzz target (after its seed corpus): a
# count of executions, not a duration. With a duration, Go 1.26's fuzzing
# coordinator can fail a target with a bare "context deadline exceeded" when
# a starved worker is mid-call as the time runs out (no input is at fault,
# none is written); a count has no deadline to race. A new interesting
# input is minimised for at most 10 s (the default, 60 s, stalls a run).
FUZZTIME ?= 3000x

# Run the server: embedded PostgreSQL in ./stello-data, fake model.
run:
	$(GO) run ./cmd/stello serve

# The whole test suite, race detector on, against a real PostgreSQL
# (a throwaway embedded instance unless STELLO_TEST_DATABASE_URL is set).
test:
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) --no-print-directory fuzz

# Each fuzz target of the packages in FUZZPKGS for FUZZTIME, seed corpus
# first (go test fuzzes one target per run: each package's instrumented test
# binary is built once and run per target, in the package directory, with
# the go command's fuzz cache). `make fuzz FUZZTIME=10m` (or 1000000x) for a
# longer hunt; an input that fails is written to <package>/testdata/fuzz/<FuzzName>/.
FUZZPKGS ?= transport llm/openai
fuzz:
	@failed=""; \
	for p in $(FUZZPKGS); do \
		dir=$$(mktemp -d) && bin=$$dir/pkg.test && \
		cache=$$($(GO) env GOCACHE)/fuzz/github.com/stellohq/stello/$$p && \
		$(GO) test -c -fuzz . -o $$bin ./$$p/ || { rm -rf $$dir; exit 1; }; \
		for f in $$($$bin -test.list '^Fuzz' | grep '^Fuzz'); do \
			echo "fuzz $$p $$f for $(FUZZTIME)"; \
			(cd $$p && $$bin -test.run '^$$' -test.fuzz "^$$f$$" -test.fuzztime $(FUZZTIME) -test.fuzzminimizetime 10s \
				-test.fuzzcachedir $$cache) || failed="$$failed $$p:$$f"; \
		done; \
		rm -rf $$dir; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz targets failed:$$failed"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

# grpcnotrace: the OTLP/HTTP trace exporter links gRPC's packages, and
# gRPC's golang.org/x/net/trace would bring html/template, whose reflective
# method calls keep every method of the provider SDKs alive (+34 MB).
build:
	$(GO) build -tags grpcnotrace -trimpath -ldflags '-s -w' -o bin/stello ./cmd/stello
