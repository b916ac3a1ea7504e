package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	dynamic := flag.Bool("dynamic", true, "also start NATS, the coordinator and a worker as the manifests configure them")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: go run . [-dynamic=false] REPO_ROOT\n\nChecks every overlay of REPO_ROOT/deploy/k8s (see checker.go).")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	root, err := filepath.Abs(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	c, err := NewChecker(root, *dynamic, os.Stdout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "k8s-check: %v\n", err)
		os.Exit(1)
	}
	dirs, err := c.Overlays()
	if err != nil {
		fmt.Fprintf(os.Stderr, "k8s-check: %v\n", err)
		os.Exit(1)
	}
	passed, failed := 0, 0
	for _, d := range dirs {
		rel, _ := filepath.Rel(root, d)
		fmt.Printf("== %s\n", rel)
		if err := c.Check(d); err != nil {
			failed++
			fmt.Printf("FAIL %s:\n%v\n", rel, err)
			continue
		}
		passed++
		fmt.Printf("ok   %s\n", rel)
	}
	fmt.Printf("k8s-check: %d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
