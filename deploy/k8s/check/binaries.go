package main

import (
	"bytes"
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// binary is what the check knows about one of our commands, learnt from
// the command itself (`--help`) and from its sources, never written down
// here: the flags it accepts, their defaults, and the environment
// variables it reads.
type binary struct {
	Name     string
	Path     string            // bin/<name>
	Flags    map[string]string // flag name -> default ("" when none printed)
	Env      map[string]bool   // STEPFLOW_* variables it reads
	FlagEnv  map[string]string // flag name -> its env variable, where known
	Consts   map[string]time.Duration
	Source   string // the file defining the flags, relative to the repo root
	ConstSrc string
}

// binarySpecs: where each command's flags are defined (bin/coordinator
// and bin/worker run `stepflow coordinator` and `stepflow worker`). Both
// print their env variables in --help ("(env STEPFLOW_X)"); the string
// literals of the env lookups in the sources add the variables read
// without a flag of their own.
var binarySpecs = []struct {
	name, source string
	consts       []string // duration constants the grace-period rules use
}{
	{"coordinator", "pkg/cli/coordinator.go", []string{"stopTimeout"}},
	{"worker", "pkg/cli/worker.go", []string{"stopGrace"}},
}

var (
	// pflag (cobra) --help lines: "  -h, --name type   usage (default x)",
	// one flag a line.
	helpFlagRE = regexp.MustCompile(`(?m)^ +(?:-[a-zA-Z], )?--([a-z0-9][a-z0-9-]*)(?: [a-zA-Z0-9]+)?  +(.*)$`)
	helpEnvRE  = regexp.MustCompile(`\(env (STEPFLOW_[A-Z0-9_]+)\)`)
	helpDefRE  = regexp.MustCompile(`\(default "?([^")]*)"?\)\s*$`)
)

// loadBinary runs `<bin> --help` and reads its sources.
func loadBinary(root, name, source string, consts []string) (*binary, error) {
	b := &binary{Name: name, Path: filepath.Join(root, "bin", name), Source: source,
		Flags: map[string]string{}, Env: map[string]bool{}, FlagEnv: map[string]string{}, Consts: map[string]time.Duration{}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.Path, "--help")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s --help: %w (run `make build` first)\n%s", b.Path, err, out.String())
	}
	for _, m := range helpFlagRE.FindAllStringSubmatch(out.String(), -1) {
		usage := strings.TrimSpace(m[2])
		def := ""
		if d := helpDefRE.FindStringSubmatch(usage); d != nil {
			def = d[1]
		}
		b.Flags[m[1]] = def
		if e := helpEnvRE.FindStringSubmatch(usage); e != nil {
			b.Env[e[1]] = true
			b.FlagEnv[m[1]] = e[1]
		}
	}
	if len(b.Flags) == 0 {
		return nil, fmt.Errorf("%s --help: no flags found in:\n%s", b.Path, out.String())
	}
	if err := b.readSource(root, consts); err != nil {
		return nil, err
	}
	return b, nil
}

// envLookups are the functions whose first argument names an environment
// variable in the commands' sources (pkg/cli's envDefaults methods and
// the os functions).
var envLookups = map[string]bool{"Getenv": true, "LookupEnv": true, "lookupStr": true, "str": true, "integer": true, "int64": true, "duration": true, "boolean": true}

// readSource collects the STEPFLOW_* variables that the source looks
// up, pairs each with the flag whose default it feeds where the call is
// the default argument of fs.XxxVar(&…, "flag", <lookup>, …), and
// evaluates the named duration constants (N * time.Second and the like).
func (b *binary) readSource(root string, consts []string) error {
	path := filepath.Join(root, b.Source)
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, 0)
	if err != nil {
		return fmt.Errorf("read %s: %w", b.Source, err)
	}
	envOfCall := func(e ast.Expr) string {
		call, ok := e.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 {
			return ""
		}
		name := ""
		switch fn := call.Fun.(type) {
		case *ast.Ident:
			name = fn.Name
		case *ast.SelectorExpr:
			name = fn.Sel.Name
		}
		lit, ok := call.Args[0].(*ast.BasicLit)
		if !envLookups[name] || !ok || lit.Kind != token.STRING {
			return ""
		}
		v, err := strconv.Unquote(lit.Value)
		if err != nil || !strings.HasPrefix(v, "STEPFLOW_") {
			return ""
		}
		return v
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			if v := envOfCall(n); v != "" {
				b.Env[v] = true
			}
			// fs.StringVar(&x, "flag", <default>, "usage") and
			// fs.String("flag", <default>, "usage")
			if sel, ok := n.Fun.(*ast.SelectorExpr); ok {
				i := -1
				switch {
				case strings.HasSuffix(sel.Sel.Name, "Var") && len(n.Args) == 4:
					i = 1
				case len(n.Args) == 3:
					i = 0
				}
				if i >= 0 {
					if lit, ok := n.Args[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						flag, _ := strconv.Unquote(lit.Value)
						if v := envOfCall(n.Args[i+1]); v != "" {
							b.FlagEnv[flag] = v
						}
					}
				}
			}
		case *ast.AssignStmt:
			// portDefault, err := envInt("STEPFLOW_PORT", …) feeds a flag
			// through a variable; pair them by the variable's name.
			if len(n.Rhs) == 1 {
				if v := envOfCall(n.Rhs[0]); v != "" {
					if id, ok := n.Lhs[0].(*ast.Ident); ok {
						b.varEnv(f, id.Name, v)
					}
				}
			}
		case *ast.ValueSpec:
			for i, id := range n.Names {
				if i < len(n.Values) && contains(consts, id.Name) {
					if d, ok := evalDuration(n.Values[i]); ok {
						b.Consts[id.Name] = d
					}
				}
			}
		}
		return true
	})
	for _, c := range consts {
		if _, ok := b.Consts[c]; !ok {
			return fmt.Errorf("%s: constant %s (N * time.Second) not found; the grace-period rules need it", b.Source, c)
		}
	}
	return nil
}

// varEnv pairs the flag defined with variable v as its default with env.
func (b *binary) varEnv(f *ast.File, v, env string) {
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || len(call.Args) != 4 {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || !strings.HasSuffix(sel.Sel.Name, "Var") {
			return true
		}
		lit, ok1 := call.Args[1].(*ast.BasicLit)
		id, ok2 := call.Args[2].(*ast.Ident)
		if ok1 && ok2 && id.Name == v {
			flag, _ := strconv.Unquote(lit.Value)
			b.FlagEnv[flag] = env
		}
		return true
	})
}

// evalDuration evaluates `N * time.Unit` and `time.Unit * N`.
func evalDuration(e ast.Expr) (time.Duration, bool) {
	be, ok := e.(*ast.BinaryExpr)
	if !ok || be.Op != token.MUL {
		return 0, false
	}
	num, unit := be.X, be.Y
	if _, ok := num.(*ast.BasicLit); !ok {
		num, unit = unit, num
	}
	lit, ok := num.(*ast.BasicLit)
	sel, ok2 := unit.(*ast.SelectorExpr)
	if !ok || !ok2 || lit.Kind != token.INT {
		return 0, false
	}
	n, err := strconv.Atoi(lit.Value)
	if err != nil {
		return 0, false
	}
	units := map[string]time.Duration{"Millisecond": time.Millisecond, "Second": time.Second, "Minute": time.Minute}
	u, ok := units[sel.Sel.Name]
	if !ok {
		return 0, false
	}
	return time.Duration(n) * u, true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
