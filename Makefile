# Stello: the two commands of the README, plus the checks CI runs.
GO ?= go

.PHONY: run test vet staticcheck build

# Run the server: embedded PostgreSQL in ./stello-data, fake model.
run:
	$(GO) run ./cmd/stello serve

# The whole test suite, race detector on, against a real PostgreSQL
# (a throwaway embedded instance unless STELLO_TEST_DATABASE_URL is set).
test:
	$(GO) test -race -count=1 -timeout 20m ./...

vet:
	$(GO) vet ./...

staticcheck:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

build:
	$(GO) build -trimpath -ldflags '-s -w' -o bin/stello ./cmd/stello
