package reorder_test

import (
	"fmt"
	"os"

	"github.com/stepflow-go/stepflow/pkg/reorder"
)

func ExampleWriter() {
	w := reorder.NewWriter(os.Stdout)
	// Results complete out of order...
	for _, i := range []int{2, 0, 3, 1} {
		if err := w.Put(i, fmt.Appendf(nil, `{"item":%d}`, i)); err != nil {
			fmt.Println(err)
		}
	}
	// ...and are written in input order.
	if err := w.Close(); err != nil {
		fmt.Println(err)
	}
	// Output:
	// {"item":0}
	// {"item":1}
	// {"item":2}
	// {"item":3}
}
