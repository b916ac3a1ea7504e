package builtin

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/stepflow-go/stepflow/pkg/executor"
	"github.com/stepflow-go/stepflow/pkg/outcome"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// maxLoadFile bounds the files /load_file reads.
const maxLoadFile = 256 << 20

// loadFile implements /load_file: {path, format?} -> {data, metadata}.
// Relative paths are joined to the working directory; the format comes
// from `format`, else the extension (.json, .yml/.yaml, anything else
// text). Every failure is invalid input, as upstream.
func (p *Plugin) loadFile(_ context.Context, req *executor.Request) (outcome.Result, error) {
	in, err := decodeInput(req.Input)
	if err != nil {
		return outcome.Result{}, err
	}
	path, err := in.reqString("path")
	if err != nil {
		return outcome.Result{}, err
	}
	format, hasFormat, err := in.optString("format")
	if err != nil {
		return outcome.Result{}, err
	}
	switch {
	case !hasFormat:
		format = detectFormat(path)
	case format == "json", format == "yaml", format == "text":
	default:
		return outcome.Result{}, invalidInput("`format`: expected json, yaml or text, got %q", format)
	}
	resolved := joinPath(p.host.WorkingDir, path)
	target, stat, readFile := resolved, os.Stat, os.ReadFile
	if p.host.ConfineFiles {
		// os.Root refuses absolute paths, ".." and symlinks that leave
		// the working directory.
		root, err := os.OpenRoot(p.host.WorkingDir)
		if err != nil {
			return outcome.Result{}, &Error{Kind: ErrInvalidInput, Detail: "cannot open the working directory", Err: err}
		}
		defer root.Close()
		if filepath.IsAbs(path) {
			return outcome.Result{}, invalidInput("path %q: this runtime reads files inside its working directory only (a relative path)", path)
		}
		target, stat, readFile = path, root.Stat, root.ReadFile
	}
	st, err := stat(target)
	if err != nil {
		return outcome.Result{}, &Error{Kind: ErrInvalidInput, Detail: "cannot read " + resolved, Err: err}
	}
	if p.host.ConfineFiles {
		for _, hidden := range p.host.HiddenFiles {
			if os.SameFile(st, hidden) {
				return outcome.Result{}, invalidInput("path %q: this runtime does not let flows read its configuration file", path)
			}
		}
	}
	if st.Size() > maxLoadFile {
		return outcome.Result{}, invalidInput("file %s is larger than %d bytes", resolved, maxLoadFile)
	}
	raw, err := readFile(target)
	if err != nil {
		return outcome.Result{}, &Error{Kind: ErrInvalidInput, Detail: "cannot read " + resolved, Err: err}
	}
	if !utf8.Valid(raw) {
		return outcome.Result{}, invalidInput("file %s is not valid UTF-8", resolved)
	}
	var data value.Value
	switch format {
	case "json":
		if data, err = value.Parse(raw); err != nil {
			return outcome.Result{}, &Error{Kind: ErrInvalidInput, Detail: "cannot parse " + resolved + " as JSON", Err: err}
		}
	case "yaml":
		if data, _, err = value.ParseYAML(raw, nil); err != nil {
			return outcome.Result{}, &Error{Kind: ErrInvalidInput, Detail: "cannot parse " + resolved + " as YAML", Err: err}
		}
	default:
		data = string(raw)
	}
	return success(value.ObjectOf(
		"data", data,
		"metadata", value.ObjectOf(
			"resolved_path", resolved,
			"size_bytes", value.Int(st.Size()),
			"format", format,
		),
	))
}

func detectFormat(path string) string {
	switch filepath.Ext(path) {
	case ".json":
		return "json"
	case ".yml", ".yaml":
		return "yaml"
	default:
		return "text"
	}
}

// joinPath joins a relative path to base without cleaning it, as Rust's
// Path::join does, so resolved_path matches upstream (`dir/./x.json`).
func joinPath(base, path string) string {
	if filepath.IsAbs(path) || base == "" {
		return path
	}
	if strings.HasSuffix(base, string(filepath.Separator)) {
		return base + path
	}
	return base + string(filepath.Separator) + path
}
