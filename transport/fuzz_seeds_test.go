package transport_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// The seed corpus of the fuzz targets lives in testdata/fuzz/<FuzzName>/,
// where `go test` runs every file as a test case. It is written from
// fuzzSeeds below: after changing the table, run
//
//	STELLO_WRITE_FUZZ_SEEDS=1 go test -run TestFuzzSeedCorpus ./transport/
//
// TestFuzzSeedCorpus fails when a seed of the table is missing from
// testdata, so the two cannot drift apart. Inputs the fuzzer finds and
// writes there itself stay alongside (commit the ones worth keeping).

// nastyStrings are JSON string values (as JSON text) that every string
// field must survive: NUL (escaped, and as a raw byte, which JSON forbids),
// invalid UTF-8 (stray continuation, truncated, overlong), lone surrogates,
// a BOM, a huge string.
var nastyStrings = []string{
	`"\u0000"`, `"a\u0000b"`, "\"a\x00b\"", "\"\xff\xfe\"", "\"\xc3\x28\"", "\"\xc0\xaf\"", "\"\xe2\x82\"",
	`"\ud800"`, `"\udc00x"`, "\"\xef\xbb\xbfbom\"", `"` + strings.Repeat("é", 3000) + `"`, `""`, `" "`,
}

// wrongTypes are JSON values of every type but string, including huge and
// odd numbers.
var wrongTypes = []string{`1`, `-0`, `1e999`, `99999999999999999999999999`, `0.5`, `true`, `[]`, `["x"]`, `{}`, `{"a":"b"}`, `null`}

// nastyBodies are whole bodies no route accepts as they are.
var nastyBodies = []string{
	``, ` `, `null`, `[]`, `"x"`, `1`, `{`, `{"a":`, `{}{}`, `{} x`, "\xef\xbb\xbf{}", "\xff", "{\"\xff\":1}",
	`{"label":"a","label":1}`, nested("[", "]", 20000), nested(`{"a":`, "}", 20000),
}

func nested(open, close string, depth int) string {
	return strings.Repeat(open, depth) + "1" + strings.Repeat(close, depth)
}

// fieldSeeds are bodies that put every nasty value in each field, with the
// other required fields set (base, a JSON object body without the closing
// brace, e.g. `{"label":"ok"`; "" for none).
func fieldSeeds(base string, fields ...string) []string {
	var out []string
	join := func(f, v string) string {
		if base == "" {
			return `{"` + f + `":` + v + `}`
		}
		return base + `,"` + f + `":` + v + `}`
	}
	for _, f := range fields {
		for _, v := range append(append([]string{}, nastyStrings...), wrongTypes...) {
			out = append(out, join(f, v))
		}
	}
	return out
}

// configSeeds put nasty values inside the config object.
var configSeeds = []string{
	`{"label":"c","config":{"k":"\u0000"}}`, `{"label":"c","config":{"\u0000":1}}`, "{\"label\":\"c\",\"config\":{\"k\":\"\xff\"}}",
	`{"label":"c","config":{"k":"\ud800"}}`, `{"label":"c","config":{"k":1e308}}`, `{"label":"c","config":{"k":-1e-400}}`,
	`{"label":"c","config":{"k":123456789012345678901234567890}}`, `{"label":"c","config":` + nested(`{"a":`, "}", 9000) + `}`,
	`{"label":"c","config":{"k":` + nested("[", "]", 9000) + `}}`,
}

func bodies(bs ...[]string) []fuzzSeed {
	var out []fuzzSeed
	for _, b := range bs {
		for _, s := range b {
			out = append(out, fuzzSeed{[]byte(s)})
		}
	}
	return out
}

// fuzzSeed is the argument list of one seed.
type fuzzSeed []any

// fuzzSeeds returns the seed corpus of every fuzz target.
func fuzzSeeds() map[string][]fuzzSeed {
	s := map[string][]fuzzSeed{}
	good := []string{`{"label":"ok"}`, `{"label":"ok","systemPrompt":"p","consolidatePrompt":null,"config":{"x":[1,2]}}`}
	s["FuzzRESTCreateSpace"] = bodies(good, nastyBodies, fieldSeeds(`{"label":"ok"`, spaceFields...), fieldSeeds("", "label"), configSeeds)
	s["FuzzRESTPatchSpace"] = bodies(good, nastyBodies, fieldSeeds("", spaceFields...), configSeeds,
		[]string{`{"label":null}`, `{"config":null}`, `{}`})
	for _, b := range bodies([]string{`{"input":"hello"}`}, nastyBodies, fieldSeeds("", "input"), []string{`{"input":"hi","extra":"\u0000"}`}) {
		s["FuzzRESTTurn"] = append(s["FuzzRESTTurn"], fuzzSeed{b[0], false}, fuzzSeed{b[0], true})
	}
	s["FuzzRESTFork"] = bodies([]string{`{"label":"kid","context":"inherit","prompt":"p","scope":"s"}`}, nastyBodies,
		fieldSeeds(`{"label":"ok"`, forkFields...), fieldSeeds("", "label"),
		[]string{`{"label":"x","context":"all"}`, `{"label":"x","context":"INHERIT"}`, `{"label":"` + strings.Repeat("x", 201) + `"}`})
	for i := range fzSlots {
		for _, b := range bodies([]string{`{"content":"p"}`, `{"content":""}`, `{"content":null}`}, nastyBodies, fieldSeeds("", "content")) {
			s["FuzzRESTPutSlot"] = append(s["FuzzRESTPutSlot"], fuzzSeed{b[0], uint8(i)})
		}
	}
	nums := []string{"", "0", "1", "-1", "+5", " 5", "5 ", "1e3", "0x10", "5abc", "\x00", "5\x00", "\xff", "１",
		"9223372036854775807", "9223372036854775808", "99999999999999999999999", "-9223372036854775808"}
	for _, n := range nums {
		s["FuzzRESTMessagesQuery"] = append(s["FuzzRESTMessagesQuery"], fuzzSeed{n, ""}, fuzzSeed{"", n})
	}
	s["FuzzRESTMessagesQuery"] = append(s["FuzzRESTMessagesQuery"], fuzzSeed{"9223372036854775807", "9223372036854775807"})
	for _, v := range []string{"", "enqueue", "reject", "interrupt", "REJECT", "enqueue\x00", "\x00", "\xff", "enqueue,reject", strings.Repeat("r", 5000)} {
		s["FuzzRESTTurnIfBusy"] = append(s["FuzzRESTTurnIfBusy"], fuzzSeed{v})
	}
	spaces := []string{"$SPACE", "{$SPACE}", "$USPACE", "$NSPACE", "urn:uuid:$SPACE", "$SPACE\x00", " $SPACE", "\x00", "\xff",
		"..", ".", "%", "%2F", "a/b", "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff", strings.Repeat("9", 5000)}
	sessions := []string{"$ROOT", "{$ROOT}", "$UROOT", "$NROOT", "urn:uuid:$ROOT", "($ROOT)", "$ROOT\x00", "\x00", "\xff", "..",
		"00000000-0000-0000-0000-000000000000", "0", "-1"}
	for r := range fzIDRoutes {
		for _, sp := range spaces {
			s["FuzzRESTPathIDs"] = append(s["FuzzRESTPathIDs"], fuzzSeed{sp, "$ROOT", uint8(r)})
		}
		if strings.Contains(fzIDRoutes[r].path, "{session}") {
			for _, se := range sessions {
				s["FuzzRESTPathIDs"] = append(s["FuzzRESTPathIDs"], fuzzSeed{"$SPACE", se, uint8(r)})
			}
		}
	}
	keys := []string{"$KEY", " $KEY ", "$KEY\xff", "\xff$KEY", "$KEY,x", "x", "", "\xff", "\xc0\xaf", "\t", strings.Repeat("k", 10000),
		"$KEY$KEY", "stello.v1", "'; DROP TABLE api_keys; --"}
	for p := range fzKeyPlaces {
		for _, k := range keys {
			s["FuzzAPIKey"] = append(s["FuzzAPIKey"], fuzzSeed{k, uint8(p)})
		}
	}
	ws := []string{
		`{"type":"session.enter","id":"a","sessionId":"$ROOT"}`, `{"type":"session.enter","id":"a","sessionId":"{$ROOT}"}`,
		`{"type":"session.enter","id":"a","sessionId":"$UROOT"}`, `{"type":"session.enter","id":"a","sessionId":"urn:uuid:$ROOT"}`,
		`{"type":"session.enter","id":"a","sessionId":"$NROOT"}`, `{"type":"session.enter","id":"a","sessionId":42}`,
		`{"type":"session.enter","id":"a","sessionId":["$ROOT"]}`, `{"type":"session.enter","id":"a","sessionId":"\u0000"}`,
		`{"type":"session.message","id":"m","input":"hello"}`, `{"type":"session.stream","id":"m","input":"hello"}`,
		`{"type":"session.message","id":"m","input":"\u0000"}`, `{"type":"session.stream","id":"m","input":"a\u0000b"}`,
		"{\"type\":\"session.message\",\"id\":\"m\",\"input\":\"\xff\xfe\"}", "{\"type\":\"session.stream\",\"id\":\"m\",\"input\":\"\xc3\x28\"}",
		`{"type":"session.message","id":"m","input":42}`, `{"type":"session.message","id":"m","input":{"a":1}}`,
		`{"type":"session.message","id":"m","input":""}`, `{"type":"session.message","id":{"x":1},"input":"hi"}`,
		`{"type":"session.message","id":"m","input":"hi","ifBusy":"nope"}`, `{"type":"session.message","id":"m","input":"hi","idempotencyKey":"\u0000"}`,
		`{"type":"session.fork","id":"f","options":{"label":"kid"}}`, `{"type":"session.fork","id":"f","options":{"label":"\u0000"}}`,
		`{"type":"session.fork","id":"f","options":{"label":"k","scope":"\u0000"}}`, `{"type":"session.fork","id":"f","options":{"label":"k","prompt":"\u0000"}}`,
		"{\"type\":\"session.fork\",\"id\":\"f\",\"options\":{\"label\":\"\xff\"}}", `{"type":"session.fork","id":"f","options":"x"}`,
		`{"type":"session.fork","id":"f","options":{"label":7}}`, `{"type":"session.fork","id":"f","options":{"label":"k","context":"all"}}`,
		`{"type":"session.leave","id":"l"}`, `{"type":"turn.attach","id":"t","turnId":"{$ROOT}","from":-1}`,
		`{"type":"turn.cancel","id":"t","turnId":"\u0000"}`, `{"type":"space.subscribe","id":"s"}`,
		`{"type":42}`, `{"type":"\u0000"}`, `{"id":"x"}`, `{}`, `[]`, `null`, `""`, `1e999`, ``, `{`, "\xff", "{\"type\":\"\xff\"}",
		`{"type":"session.message","id":"m","input":"` + strings.Repeat("w ", 5000) + `"}`,
		nested(`{"type":"session.message","id":"m","input":`, "}", 300), nested("[", "]", 20000),
	}
	for _, m := range ws {
		s["FuzzWSMessage"] = append(s["FuzzWSMessage"], fuzzSeed{false, []byte(m)}, fuzzSeed{true, []byte(m)})
	}
	return s
}

// encodeSeed renders a seed in the `go test fuzz v1` corpus file format.
func encodeSeed(args fuzzSeed) []byte {
	var b strings.Builder
	b.WriteString("go test fuzz v1\n")
	for _, a := range args {
		switch v := a.(type) {
		case []byte:
			fmt.Fprintf(&b, "[]byte(%q)\n", v)
		case string:
			fmt.Fprintf(&b, "string(%q)\n", v)
		case bool:
			fmt.Fprintf(&b, "bool(%v)\n", v)
		case uint8:
			fmt.Fprintf(&b, "byte(%d)\n", v)
		default:
			panic(fmt.Sprintf("unsupported seed type %T", a))
		}
	}
	return []byte(b.String())
}

// TestFuzzSeedCorpus checks that testdata/fuzz holds every seed of
// fuzzSeeds (or writes them with STELLO_WRITE_FUZZ_SEEDS=1).
func TestFuzzSeedCorpus(t *testing.T) {
	write := os.Getenv("STELLO_WRITE_FUZZ_SEEDS") == "1"
	seeds := fuzzSeeds()
	names := make([]string, 0, len(seeds))
	for n := range seeds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		dir := filepath.Join("testdata", "fuzz", name)
		if write {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for _, seed := range seeds[name] {
			data := encodeSeed(seed)
			sum := sha256.Sum256(data)
			file := filepath.Join(dir, "seed-"+hex.EncodeToString(sum[:8]))
			if write {
				if err := os.WriteFile(file, data, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(file)
			if err != nil || string(got) != string(data) {
				t.Errorf("seed %s of %s is missing from testdata (run with STELLO_WRITE_FUZZ_SEEDS=1): %.200q", file, name, data)
			}
		}
	}
}
