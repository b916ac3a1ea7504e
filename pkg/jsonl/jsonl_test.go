package jsonl

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/stepflow-go/stepflow/pkg/value"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// result is one outcome of Reader.Next, with Data copied.
type result struct {
	Item Item
	Err  error
}

// readAll calls Next until io.EOF or a non-LineError error, collecting
// every item and LineError.
func readAll(t *testing.T, r *Reader) ([]result, error) {
	t.Helper()
	var out []result
	for {
		it, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		var le *LineError
		if err != nil && !errors.As(err, &le) {
			return out, err
		}
		it.Data = bytes.Clone(it.Data)
		out = append(out, result{Item: it, Err: err})
	}
}

// dataOf returns the Data of all successful results as strings.
func dataOf(rs []result) []string {
	var out []string
	for _, r := range rs {
		if r.Err == nil {
			out = append(out, string(r.Item.Data))
		}
	}
	return out
}

func TestReaderValidInputs(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []string
	}{
		{"empty", "", nil},
		{"single with newline", "{\"a\":1}\n", []string{`{"a":1}`}},
		{"single without newline", `{"a":1}`, []string{`{"a":1}`}},
		{"two lines", "{\"a\":1}\n{\"a\":2}\n", []string{`{"a":1}`, `{"a":2}`}},
		{"no final newline", "{\"a\":1}\n{\"a\":2}", []string{`{"a":1}`, `{"a":2}`}},
		{"crlf", "{\"a\":1}\r\n{\"a\":2}\r\n", []string{`{"a":1}`, `{"a":2}`}},
		{"crlf without final newline", "1\r\n2\r", []string{"1", "2"}},
		{"mixed endings", "1\r\n2\n3", []string{"1", "2", "3"}},
		{"scalars and arrays", "1\n\"x\"\n[1]\nnull\ntrue\n-2.5e3\n", []string{"1", `"x"`, "[1]", "null", "true", "-2.5e3"}},
		{"surrounding whitespace kept", " {\"a\":1}\t\n", []string{" {\"a\":1}\t"}},
		{"newline escaped in string", `"a\nb"` + "\n", []string{`"a\nb"`}},
		{"nested", `{"a":[{"b":{"c":[]}}]}`, []string{`{"a":[{"b":{"c":[]}}]}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := readAll(t, NewReader(strings.NewReader(tt.input)))
			require.NoError(t, err)
			require.Equal(t, tt.want, dataOf(rs))
			for i, r := range rs {
				require.NoError(t, r.Err)
				require.Equal(t, i, r.Item.Index)
				require.Equal(t, i+1, r.Item.Line)
			}
			n, err := Validate(strings.NewReader(tt.input))
			require.NoError(t, err)
			require.Equal(t, len(tt.want), n)
		})
	}
}

func TestReaderLineErrors(t *testing.T) {
	tests := []struct {
		name     string
		input    string
		wantLine int
		wantCol  int
		wantErr  error
		wantMsg  string
	}{
		{"blank middle line", "1\n\n2\n", 2, 0, ErrBlankLine, "in.jsonl:2: blank line"},
		{"whitespace line", "1\n \t \n2\n", 2, 0, ErrBlankLine, "in.jsonl:2: blank line"},
		{"vertical tab is not JSON whitespace", "\v\n", 1, 1, ErrInvalidJSON,
			"in.jsonl:1:1: invalid JSON: invalid character '\\v' looking for beginning of value"},
		{"cr only line", "1\r\n\r\n2\r\n", 2, 0, ErrBlankLine, "in.jsonl:2: blank line"},
		{"trailing double newline", "1\n2\n\n", 3, 0, ErrBlankLine, "in.jsonl:3: blank line"},
		{"only newline", "\n", 1, 0, ErrBlankLine, "in.jsonl:1: blank line"},
		{"syntax error", "1\n{\"a\":}\n", 2, 6, ErrInvalidJSON,
			"in.jsonl:2:6: invalid JSON: invalid character '}' looking for beginning of value"},
		{"truncated", "{\"a\":1\n", 1, 6, ErrInvalidJSON, "in.jsonl:1:6: invalid JSON: unexpected end of JSON input"},
		{"two values on a line", "1 2\n", 1, 3, ErrInvalidJSON,
			"in.jsonl:1:3: invalid JSON: invalid character '2' after top-level value"},
		{"bare word", "hello\n", 1, 1, ErrInvalidJSON,
			"in.jsonl:1:1: invalid JSON: invalid character 'h' looking for beginning of value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := Validate(strings.NewReader(tt.input), WithName("in.jsonl"))
			var le *LineError
			require.ErrorAs(t, err, &le)
			require.ErrorIs(t, err, tt.wantErr)
			require.Equal(t, tt.wantLine, le.Line)
			require.Equal(t, tt.wantLine-1, le.Index)
			require.Equal(t, "in.jsonl", le.Name)
			require.Equal(t, tt.wantLine-1, n, "valid items before the error")
			require.Equal(t, tt.wantCol, le.Col)
			require.EqualError(t, err, tt.wantMsg)
		})
	}
}

func TestLineErrorWithoutName(t *testing.T) {
	_, err := Validate(strings.NewReader("1\n[1,]\n"))
	require.EqualError(t, err, "line 2, column 4: invalid JSON: invalid character ']' looking for beginning of value")
	var se *json.SyntaxError
	require.ErrorAs(t, err, &se, "the json.SyntaxError stays reachable")

	_, err = Validate(strings.NewReader("\n"))
	require.EqualError(t, err, "line 1: blank line")
}

func TestReaderContinuesAfterInvalidLine(t *testing.T) {
	input := "{\"a\":1}\nnot json\n\n{\"a\":4}\n" + strings.Repeat("x", 50) + "\n[6]"
	r := NewReader(strings.NewReader(input), WithMaxLineBytes(20), WithName("f"))
	rs, err := readAll(t, r)
	require.NoError(t, err)
	require.Len(t, rs, 6)

	require.NoError(t, rs[0].Err)
	require.ErrorIs(t, rs[1].Err, ErrInvalidJSON)
	require.ErrorIs(t, rs[2].Err, ErrBlankLine)
	require.NoError(t, rs[3].Err)
	require.ErrorIs(t, rs[4].Err, ErrLineTooLong)
	require.NoError(t, rs[5].Err)

	require.Equal(t, Item{Index: 3, Line: 4, Data: []byte(`{"a":4}`)}, rs[3].Item)
	require.Equal(t, Item{Index: 5, Line: 6, Data: []byte(`[6]`)}, rs[5].Item)
	for i, r := range rs {
		var le *LineError
		if errors.As(r.Err, &le) {
			require.Equal(t, i+1, le.Line)
			require.Equal(t, i, le.Index)
		}
	}

	// The end is sticky.
	_, err = r.Next()
	require.Equal(t, io.EOF, err)
}

func TestHugeLine(t *testing.T) {
	// A ~10 MiB object, read through the slow path of the Reader.
	big := `{"s":"` + strings.Repeat("a", 10<<20) + `"}`
	input := "1\n" + big + "\r\n2\n"
	r := NewReader(strings.NewReader(input))
	var got []int
	for {
		it, err := r.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		got = append(got, len(it.Data))
		if it.Line == 2 {
			require.True(t, bytes.Equal([]byte(big), it.Data))
		}
	}
	require.Equal(t, []int{1, len(big), 1}, got)
}

func TestLineTooLong(t *testing.T) {
	tests := []struct {
		name    string
		max     int
		bufSize int
		line    string
		tooLong bool
	}{
		{"fits exactly fast path", 8, 0, "12345678", false},
		{"one over fast path", 8, 0, "123456789", true},
		{"fits exactly with crlf", 8, 16, "12345678\r", false},
		{"fits exactly slow path", 40, 16, strings.Repeat("1", 40), false},
		{"fits exactly slow path crlf", 40, 16, strings.Repeat("1", 40) + "\r", false},
		{"one over slow path", 40, 16, strings.Repeat("1", 41), true},
		{"far over slow path", 40, 16, strings.Repeat("1", 1000), true},
	}
	for _, tt := range tests {
		for _, last := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/last=%v", tt.name, last), func(t *testing.T) {
				input := "1\n" + tt.line + "\n2\n"
				if last {
					input = "1\n" + tt.line
				}
				opts := []Option{WithMaxLineBytes(tt.max), WithName("big.jsonl")}
				if tt.bufSize > 0 {
					opts = append(opts, withBufferSize(tt.bufSize))
				}
				rs, err := readAll(t, NewReader(strings.NewReader(input), opts...))
				require.NoError(t, err)
				if last {
					require.Len(t, rs, 2)
				} else {
					require.Len(t, rs, 3)
					require.Equal(t, []byte("2"), rs[2].Item.Data)
				}
				if !tt.tooLong {
					require.NoError(t, rs[1].Err)
					return
				}
				require.ErrorIs(t, rs[1].Err, ErrLineTooLong)
				require.EqualError(t, rs[1].Err, fmt.Sprintf("big.jsonl:2: line too long (more than %d bytes)", tt.max))
			})
		}
	}
}

func TestDefaultMaxLineBytes(t *testing.T) {
	require.GreaterOrEqual(t, DefaultMaxLineBytes, 64<<20)
	r := NewReader(strings.NewReader(""), WithMaxLineBytes(0))
	require.Equal(t, DefaultMaxLineBytes, r.maxLine)
}

func TestSmallBufferMatchesDefault(t *testing.T) {
	// Lines longer than the bufio buffer take the slow path; results must
	// be the same.
	input := "{\"a\":\"" + strings.Repeat("x", 100) + "\"}\r\n[1,2,3]\n\n" + strings.Repeat(" ", 70) + "\n{bad" + strings.Repeat(" ", 50) + "\n\"end\""
	want, err := readAll(t, NewReader(strings.NewReader(input)))
	require.NoError(t, err)
	got, err := readAll(t, NewReader(iotest.OneByteReader(strings.NewReader(input)), withBufferSize(16)))
	require.NoError(t, err)
	require.Equal(t, want, got)
}

func TestReadError(t *testing.T) {
	boom := errors.New("boom")
	src := io.MultiReader(strings.NewReader("1\n2\n3"), iotest.ErrReader(boom))
	r := NewReader(src, WithName("in.jsonl"))

	for want := 1; want <= 2; want++ {
		it, err := r.Next()
		require.NoError(t, err)
		require.Equal(t, want, it.Line)
	}
	// The partial third line is not returned; the read error is.
	_, err := r.Next()
	require.ErrorIs(t, err, boom)
	var le *LineError
	require.False(t, errors.As(err, &le))
	require.EqualError(t, err, "jsonl: in.jsonl: reading line 3: boom")
	// Sticky.
	_, err2 := r.Next()
	require.Equal(t, err, err2)

	n, err := Validate(io.MultiReader(strings.NewReader("1\n"), iotest.ErrReader(boom)))
	require.ErrorIs(t, err, boom)
	require.Equal(t, 1, n)
}

func TestDataAliasesBuffer(t *testing.T) {
	// Document by test that Data must be copied to be kept: the fast path
	// returns slices of the bufio buffer.
	r := NewReader(strings.NewReader("111\n222\n"))
	a, err := r.Next()
	require.NoError(t, err)
	kept := bytes.Clone(a.Data)
	_, err = r.Next()
	require.NoError(t, err)
	require.Equal(t, []byte("111"), kept)
}

// reference splits input with the simplest possible implementation of the
// format and returns, per line, the data or the sentinel error expected.
func reference(input []byte, maxLine int) (lines [][]byte, errs []error) {
	if len(input) == 0 {
		return nil, nil
	}
	parts := bytes.Split(input, []byte("\n"))
	if input[len(input)-1] == '\n' {
		parts = parts[:len(parts)-1]
	}
	for _, p := range parts {
		p = bytes.TrimSuffix(p, []byte("\r"))
		switch {
		case len(p) > maxLine:
			lines, errs = append(lines, nil), append(errs, ErrLineTooLong)
		case len(bytes.Trim(p, " \t\r")) == 0:
			lines, errs = append(lines, nil), append(errs, ErrBlankLine)
		case !json.Valid(p):
			lines, errs = append(lines, nil), append(errs, ErrInvalidJSON)
		case strictErr(p) != nil:
			// Valid syntax whose meaning a parser would change: invalid
			// UTF-8, an unpaired surrogate, a repeated key.
			lines, errs = append(lines, nil), append(errs, ErrInvalidJSON)
		default:
			lines, errs = append(lines, p), append(errs, nil)
		}
	}
	return lines, errs
}

// strictErr is the reference for strictCheck: a full strict parse.
func strictErr(p []byte) error {
	_, err := value.ParseStrict(p)
	return err
}

func FuzzReader(f *testing.F) {
	seeds := []string{
		"",
		"\n",
		"\n\n",
		"{}\n",
		"{\"a\":1}\n{\"b\":[1,2,{}]}\n",
		"1\r\n\"x\"\r\n[1]\r\n",
		"null\ntrue\nfalse",
		"1\n\n2\n",
		"1\n2\n\n",
		"{\"a\":}\n{}\n",
		" \t \n",
		"\r",
		"\"a\\nb\"\n\"\\u00e9\"",
		"[[[[[[[[[[]]]]]]]]]]\n" + strings.Repeat("9", 40) + "\n",
		"\"\xff\"\n",
		"1 2\n{\n}\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s), uint8(0), uint8(0))
	}
	f.Add([]byte(strings.Repeat("[", 30)+strings.Repeat("]", 30)+"\n1"), uint8(10), uint8(16))
	f.Add([]byte("\"abcdefghijklmnopqrstuvwxyz\"\r\n2"), uint8(28), uint8(16))

	f.Fuzz(func(t *testing.T, input []byte, maxLine, bufSize uint8) {
		max := DefaultMaxLineBytes
		if maxLine > 0 {
			max = int(maxLine)
		}
		opts := []Option{WithMaxLineBytes(max)}
		if bufSize >= 16 {
			opts = append(opts, withBufferSize(int(bufSize)))
		}

		wantLines, wantErrs := reference(input, max)

		r := NewReader(bytes.NewReader(input), opts...)
		var n int
		firstErr := -1
		for i := 0; ; i++ {
			it, err := r.Next()
			if err == io.EOF {
				break
			}
			if i >= len(wantLines) {
				t.Fatalf("extra line %d: %+v %v", i+1, it, err)
			}
			if err != nil {
				var le *LineError
				if !errors.As(err, &le) {
					t.Fatalf("line %d: unexpected error type %T: %v", i+1, err, err)
				}
				if le.Line != i+1 || le.Index != i {
					t.Fatalf("line %d: LineError has Line %d, Index %d", i+1, le.Line, le.Index)
				}
				if !errors.Is(err, wantErrs[i]) {
					t.Fatalf("line %d: got %v, want %v", i+1, err, wantErrs[i])
				}
				if firstErr < 0 {
					firstErr = i
				}
				_ = err.Error()
				continue
			}
			if !json.Valid(it.Data) {
				t.Fatalf("line %d: invalid JSON returned: %q", i+1, it.Data)
			}
			if wantErrs[i] != nil {
				t.Fatalf("line %d: got item %q, want error %v", i+1, it.Data, wantErrs[i])
			}
			if !bytes.Equal(it.Data, wantLines[i]) || it.Line != i+1 || it.Index != i {
				t.Fatalf("line %d: got %+v, want data %q", i+1, it, wantLines[i])
			}
			n++
		}
		if got := n + countErrs(wantErrs); got != len(wantLines) {
			t.Fatalf("got %d lines, want %d", got, len(wantLines))
		}

		count, err := Validate(bytes.NewReader(input), opts...)
		if firstErr < 0 {
			if err != nil || count != n {
				t.Fatalf("Validate = %d, %v; iterating gave %d items", count, err, n)
			}
		} else {
			var le *LineError
			if !errors.As(err, &le) || le.Line != firstErr+1 || count != firstErr {
				t.Fatalf("Validate = %d, %v; want LineError at line %d", count, err, firstErr+1)
			}
		}
	})
}

func countErrs(errs []error) int {
	n := 0
	for _, e := range errs {
		if e != nil {
			n++
		}
	}
	return n
}

func BenchmarkReader(b *testing.B) {
	var buf bytes.Buffer
	const lines = 100_000
	for i := range lines {
		// ~100 bytes per line.
		fmt.Fprintf(&buf, `{"id":%7d,"name":"item-%07d","tags":["alpha","beta"],"score":%5d.25,"ok":true,"x":null}`+"\n", i, i, i%10000)
	}
	input := buf.Bytes()
	b.SetBytes(int64(len(input)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r := NewReader(bytes.NewReader(input))
		n := 0
		for {
			_, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			n++
		}
		if n != lines {
			b.Fatalf("got %d lines", n)
		}
	}
}

func TestDefaultLimitAccepts64MiB(t *testing.T) {
	if testing.Short() {
		t.Skip("short: allocates 128 MiB")
	}
	// A string value that makes the line exactly DefaultMaxLineBytes long,
	// followed by one that is a byte longer.
	body := bytes.Repeat([]byte("a"), DefaultMaxLineBytes-2)
	line := func(extra string) io.Reader {
		return io.MultiReader(strings.NewReader(`"`+extra), bytes.NewReader(body), strings.NewReader("\"\r\n"))
	}
	r := NewReader(io.MultiReader(line(""), line("b"), strings.NewReader("7")), WithName("huge.jsonl"))

	it, err := r.Next()
	require.NoError(t, err)
	require.Len(t, it.Data, DefaultMaxLineBytes)

	_, err = r.Next()
	require.ErrorIs(t, err, ErrLineTooLong)
	require.EqualError(t, err, "huge.jsonl:2: line too long (more than 67108864 bytes)")

	it, err = r.Next()
	require.NoError(t, err)
	require.Equal(t, Item{Index: 2, Line: 3, Data: []byte("7")}, it)
}

// Lines whose meaning a JSON parser would change silently are refused
// with the place: invalid UTF-8, an unpaired surrogate escape, a key
// given twice.
func TestStrictLines(t *testing.T) {
	input := "{\"a\":1}\n{\"name\":\"x\xffy\"}\n{\"s\":\"\\ud800\"}\n{\"k\":1,\"k\":2}\n{\"ok\":\"\\ud83d\\ude00é\",\"k\":{\"k\":1}}\n"
	r := NewReader(strings.NewReader(input), WithName("items.jsonl"))
	var got []string
	for {
		it, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			require.ErrorIs(t, err, ErrInvalidJSON)
			got = append(got, err.Error())
			continue
		}
		got = append(got, fmt.Sprintf("item %d ok", it.Index))
	}
	require.Equal(t, []string{
		"item 0 ok",
		"items.jsonl:2:11: invalid JSON: invalid UTF-8 in string",
		"items.jsonl:3:7: invalid JSON: unpaired UTF-16 surrogate escape in string",
		`items.jsonl:4:8: invalid JSON: duplicate key "k" in object`,
		"item 4 ok",
	}, got)
}
