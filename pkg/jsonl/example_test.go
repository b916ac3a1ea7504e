package jsonl_test

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/stepflow-go/stepflow/pkg/jsonl"
)

// Reading items and turning bad lines into failed items instead of
// aborting.
func ExampleReader() {
	input := "{\"n\":1}\r\n[2]\n{\"n\":\n\n\"four\"\n"
	r := jsonl.NewReader(strings.NewReader(input), jsonl.WithName("items.jsonl"))
	for {
		item, err := r.Next()
		if err == io.EOF {
			break
		}
		var lineErr *jsonl.LineError
		if errors.As(err, &lineErr) {
			fmt.Printf("item %d failed: %v\n", lineErr.Index, err)
			continue
		}
		if err != nil {
			fmt.Println("fatal:", err)
			return
		}
		fmt.Printf("item %d: %s\n", item.Index, item.Data)
	}
	// Output:
	// item 0: {"n":1}
	// item 1: [2]
	// item 2 failed: items.jsonl:3:5: invalid JSON: unexpected end of JSON input
	// item 3 failed: items.jsonl:4: blank line
	// item 4: "four"
}

// Pre-scanning an input before running anything.
func ExampleValidate() {
	n, err := jsonl.Validate(strings.NewReader("1\n2\n\n"), jsonl.WithName("items.jsonl"))
	fmt.Println(n, err)
	// Output:
	// 2 items.jsonl:3: blank line
}
