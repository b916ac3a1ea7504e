package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// dockerfile is the part of a Dockerfile the check reads.
type dockerfile struct {
	Path   string // relative to the repo root
	Stages []stage
	Header string // the leading comment block
}

type stage struct {
	From, Name string
	Instrs     []instr
}

type instr struct {
	Cmd, Args string
	Line      int
}

func parseDockerfile(root, rel string) (*dockerfile, error) {
	f, err := os.Open(filepath.Join(root, rel))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d := &dockerfile{Path: rel}
	sc := bufio.NewScanner(f)
	var cur strings.Builder
	start, n := 0, 0
	header := true
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			if header {
				d.Header += line + "\n"
			}
			continue
		}
		if line == "" && cur.Len() == 0 {
			continue
		}
		header = false
		if cur.Len() == 0 {
			start = n
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		full := cur.String()
		cur.Reset()
		cmd, args, _ := strings.Cut(full, " ")
		in := instr{Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args), Line: start}
		if in.Cmd == "FROM" {
			fields := strings.Fields(in.Args)
			s := stage{From: fields[0]}
			if len(fields) == 3 && strings.EqualFold(fields[1], "AS") {
				s.Name = fields[2]
			}
			d.Stages = append(d.Stages, s)
			continue
		}
		if len(d.Stages) == 0 {
			return nil, fmt.Errorf("%s:%d: %s before FROM", rel, start, in.Cmd)
		}
		last := &d.Stages[len(d.Stages)-1]
		last.Instrs = append(last.Instrs, in)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(d.Stages) == 0 {
		return nil, fmt.Errorf("%s: no FROM", rel)
	}
	return d, nil
}

func (d *dockerfile) final() stage { return d.Stages[len(d.Stages)-1] }

// user returns the numeric uid of the final stage's last USER, and where.
func (d *dockerfile) user() (uid int, line int, err error) {
	found := false
	for _, in := range d.final().Instrs {
		if in.Cmd != "USER" {
			continue
		}
		found, line = true, in.Line
		u, _, _ := strings.Cut(in.Args, ":")
		uid, err = strconv.Atoi(u)
		if err != nil {
			return 0, line, fmt.Errorf("%s:%d: USER %s is not numeric: the kubelet can verify runAsNonRoot only for a numeric uid", d.Path, line, in.Args)
		}
	}
	if !found {
		return 0, 0, fmt.Errorf("%s: the final stage has no USER: the image would run as root", d.Path)
	}
	if uid == 0 {
		return 0, line, fmt.Errorf("%s:%d: USER is root (uid 0)", d.Path, line)
	}
	return uid, line, nil
}

// entrypoint returns the final stage's ENTRYPOINT in exec form.
func (d *dockerfile) entrypoint() ([]string, error) {
	var ep []string
	for _, in := range d.final().Instrs {
		if in.Cmd == "ENTRYPOINT" {
			if err := json.Unmarshal([]byte(in.Args), &ep); err != nil {
				return nil, fmt.Errorf("%s:%d: ENTRYPOINT must be in exec form (a JSON array) so that the binary gets SIGTERM: %w", d.Path, in.Line, err)
			}
		}
	}
	if len(ep) == 0 {
		return nil, fmt.Errorf("%s: the final stage has no ENTRYPOINT", d.Path)
	}
	return ep, nil
}

var (
	goBuildRE = regexp.MustCompile(`CGO_ENABLED=0 .*go build .*-o (/\S+) \./cmd/([a-z]+)`)
	tagRE     = regexp.MustCompile(`docker build -f (\S+) -t (\S+) \.`)
)

// checkBinaryBuild verifies that the image runs bin as built from
// ./cmd/<bin>: a golang build stage with CGO_ENABLED=0 builds it, the
// final stage copies it to /usr/local/bin/<bin>, and ENTRYPOINT runs it.
func (d *dockerfile) checkBinaryBuild(bin string) error {
	var built string
	for _, s := range d.Stages[:len(d.Stages)-1] {
		if !strings.HasPrefix(s.From, "golang:") {
			continue
		}
		for _, in := range s.Instrs {
			if m := goBuildRE.FindStringSubmatch(in.Args); in.Cmd == "RUN" && m != nil && m[2] == bin {
				built = "--from=" + s.Name + " " + m[1] + " "
			}
		}
	}
	if built == "" {
		return fmt.Errorf("%s: no golang build stage runs `CGO_ENABLED=0 go build -o /out/%s ./cmd/%s`", d.Path, bin, bin)
	}
	target := "/usr/local/bin/" + bin
	copied := false
	for _, in := range d.final().Instrs {
		if in.Cmd == "COPY" && strings.HasPrefix(in.Args, built) && strings.HasSuffix(in.Args, " "+target) {
			copied = true
		}
	}
	if !copied {
		return fmt.Errorf("%s: the final stage does not COPY %s%s", d.Path, built, target)
	}
	ep, err := d.entrypoint()
	if err != nil {
		return err
	}
	if ep[len(ep)-1] != target {
		return fmt.Errorf("%s: ENTRYPOINT %q does not end with %s", d.Path, ep, target)
	}
	return nil
}

// copies returns the final stage's COPY instructions from the build
// context: image path -> repo path.
func (d *dockerfile) copies() map[string]string {
	m := map[string]string{}
	for _, in := range d.final().Instrs {
		if in.Cmd != "COPY" || strings.HasPrefix(in.Args, "--from") {
			continue
		}
		f := strings.Fields(in.Args)
		if len(f) == 2 {
			m[f[1]] = f[0]
		}
	}
	return m
}

// builds returns the `docker build -f <file> -t <image> .` the header
// documents, or "".
func (d *dockerfile) builds() (file, image string) {
	if m := tagRE.FindStringSubmatch(d.Header); m != nil {
		return m[1], m[2]
	}
	return "", ""
}
