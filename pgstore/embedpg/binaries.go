package embedpg

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ErrNoBinaries reports that no PostgreSQL server binaries (initdb and
// postgres) could be found. Errors returned by FindBinaries and Start wrap it.
var ErrNoBinaries = errors.New("PostgreSQL server binaries (initdb, postgres) not found")

// EnvBinDir names the environment variable that points at the directory
// holding the initdb and postgres executables.
const EnvBinDir = "STELLO_PG_BIN"

// howToFix is appended to every ErrNoBinaries error.
const howToFix = "install the PostgreSQL server binaries (e.g. `apt-get install postgresql`, " +
	"`dnf install postgresql-server` or `brew install postgresql`), " +
	"or set " + EnvBinDir + " to the directory containing initdb and postgres " +
	"(e.g. /usr/lib/postgresql/15/bin), " +
	"or use an existing server by passing --database-url / setting STELLO_DATABASE_URL"

// defaultGlobs lists the well-known install locations searched after PATH,
// newest version first.
var defaultGlobs = []string{
	"/usr/lib/postgresql/*/bin", // Debian, Ubuntu
	"/usr/pgsql-*/bin",          // RHEL PGDG packages
	"/usr/local/pgsql/bin",      // source installs
	"/opt/homebrew/opt/postgresql@*/bin",
	"/usr/local/opt/postgresql@*/bin",
}

// searchInput holds everything FindBinaries looks at, so that the search
// order can be tested deterministically.
type searchInput struct {
	envDir   string   // value of STELLO_PG_BIN
	pathList string   // value of PATH
	globs    []string // well-known locations, in priority order
}

// FindBinaries returns the directory that holds both the initdb and the
// postgres executables. It looks, in order, at $STELLO_PG_BIN, at the
// directories on $PATH (following symlinks, and asking pg_config --bindir),
// and at the newest version under well-known install locations such as
// /usr/lib/postgresql/*/bin. If STELLO_PG_BIN is set it must be valid.
// (Start, given an existing data directory, instead picks the first of these
// whose major version matches the directory's.)
// When nothing is found the returned error wraps ErrNoBinaries and explains
// how to fix the problem.
func FindBinaries() (string, error) {
	return findBinaries(defaultSearch())
}

func findBinaries(in searchInput) (string, error) {
	dirs, err := candidates(in)
	if err != nil {
		return "", err
	}
	return dirs[0], nil
}

// findBinariesFor is findBinaries for an existing cluster initialised by
// PostgreSQL major version want (the content of PG_VERSION, e.g. "15"): it
// returns the first candidate of that version, as a server of another major
// version cannot open the cluster.
func findBinariesFor(in searchInput, want string) (string, error) {
	dirs, err := candidates(in)
	if err != nil {
		return "", err
	}
	var found []string
	for _, d := range dirs {
		v, err := binaryMajor(d)
		if err != nil {
			found = append(found, fmt.Sprintf("%s (%v)", d, err))
			continue
		}
		if v == want {
			return d, nil
		}
		found = append(found, fmt.Sprintf("%s (version %s)", d, v))
	}
	return "", fmt.Errorf("%w: the data directory was initialised by PostgreSQL %s, but only other versions were found: %s; "+
		"install the PostgreSQL %[2]s server binaries (e.g. `apt-get install postgresql-%[2]s`) and/or point %s at them, "+
		"upgrade the data directory with pg_upgrade, or use another --data-dir",
		ErrNoBinaries, want, strings.Join(found, ", "), EnvBinDir)
}

// candidates lists the directories holding initdb and postgres, best first.
func candidates(in searchInput) ([]string, error) {
	if in.envDir != "" {
		dir, err := filepath.Abs(in.envDir)
		if err == nil && hasBinaries(dir) {
			return []string{dir}, nil
		}
		return nil, fmt.Errorf("%w: %s=%q does not contain both initdb and postgres executables; %s",
			ErrNoBinaries, EnvBinDir, in.envDir, howToFix)
	}

	var dirs []string
	seen := map[string]bool{}
	add := func(d string) {
		key := d
		if r, err := filepath.EvalSymlinks(d); err == nil {
			key = r
		}
		if !seen[key] && hasBinaries(d) {
			seen[key] = true
			dirs = append(dirs, d)
		}
	}
	for _, d := range filepath.SplitList(in.pathList) {
		if d == "" || !filepath.IsAbs(d) {
			continue
		}
		// A PATH entry may hold the real binaries, or symlinks / wrappers
		// (e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb).
		for _, name := range []string{"postgres", "initdb"} {
			p := filepath.Join(d, name)
			if !isExecutable(p) {
				continue
			}
			if real, err := filepath.EvalSymlinks(p); err == nil {
				add(filepath.Dir(real))
			}
			add(d)
		}
		if pc := filepath.Join(d, "pg_config"); isExecutable(pc) {
			if out, err := exec.Command(pc, "--bindir").Output(); err == nil {
				if bd := strings.TrimSpace(string(out)); filepath.IsAbs(bd) {
					add(bd)
				}
			}
		}
	}
	for _, g := range in.globs {
		matches, _ := filepath.Glob(g)
		sortNewestFirst(matches)
		for _, m := range matches {
			add(m)
		}
	}
	if len(dirs) == 0 {
		return nil, fmt.Errorf("%w (searched $PATH and %s); %s",
			ErrNoBinaries, strings.Join(in.globs, ", "), howToFix)
	}
	return dirs, nil
}

// binaryMajor returns the major version of dir/postgres as PG_VERSION
// spells it ("15", or "9.6" before version 10).
func binaryMajor(dir string) (string, error) {
	out, err := exec.Command(filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("postgres --version: %w", err)
	}
	// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
	_, rest, ok := strings.Cut(string(out), ")")
	f := strings.Fields(rest)
	if !ok || len(f) == 0 {
		return "", fmt.Errorf("unexpected postgres --version output %q", out)
	}
	parts := strings.FieldsFunc(f[0], func(r rune) bool { return r < '0' || r > '9' })
	if len(parts) == 0 {
		return "", fmt.Errorf("unexpected postgres --version output %q", out)
	}
	if major, _ := strconv.Atoi(parts[0]); major < 10 && len(parts) > 1 {
		return parts[0] + "." + parts[1], nil
	}
	return parts[0], nil
}

func defaultSearch() searchInput {
	return searchInput{envDir: os.Getenv(EnvBinDir), pathList: os.Getenv("PATH"), globs: defaultGlobs}
}

// hasBinaries reports whether dir holds executable initdb and postgres files.
func hasBinaries(dir string) bool {
	return isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres"))
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// sortNewestFirst orders paths by the first version number embedded in them,
// highest first (so /usr/lib/postgresql/16/bin precedes .../9.6/bin).
func sortNewestFirst(paths []string) {
	sort.SliceStable(paths, func(a, b int) bool {
		va, vb := pathVersion(paths[a]), pathVersion(paths[b])
		for i := 0; i < len(va) && i < len(vb); i++ {
			if va[i] != vb[i] {
				return va[i] > vb[i]
			}
		}
		return len(va) > len(vb)
	})
}

// pathVersion extracts the version from the last path element of p that
// holds a number ("/usr/lib/postgresql/9.6/bin" → [9 6], "/usr/pgsql-13/bin" → [13]).
func pathVersion(p string) []int {
	elems := strings.Split(filepath.ToSlash(p), "/")
	for j := len(elems) - 1; j >= 0; j-- {
		if strings.ContainsAny(elems[j], "0123456789") {
			p = elems[j]
			break
		}
	}
	start := strings.IndexAny(p, "0123456789")
	if start < 0 {
		return nil
	}
	end := start
	for end < len(p) && (p[end] == '.' || (p[end] >= '0' && p[end] <= '9')) {
		end++
	}
	var v []int
	for _, f := range strings.Split(strings.Trim(p[start:end], "."), ".") {
		n, err := strconv.Atoi(f)
		if err != nil {
			break
		}
		v = append(v, n)
	}
	return v
}
