package value

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRoundTripKeepsOrderAndNumbers(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		`{"b":1,"a":[1.0,2.5,-0.0,1e20,1.5e-7,0.00001,"x\"y\\z\n\u0001é/<>&"],"c":{"z":null,"y":true,"x":false}}`,
		`[]`, `{}`, `"plain"`, `0`, `-12`, `18446744073709551615`,
	} {
		v, err := ParseString(in)
		require.NoError(t, err, in)
		require.Equal(t, in, String(v))
	}
}

func TestFloatFormatMatchesSerde(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"1.00": "1.0", "100.0": "100.0", "1E3": "1000.0", "1e16": "1e16", "1e15": "1000000000000000.0",
		"0.1": "0.1", "1e-5": "0.00001", "1e-6": "1e-6", "1.5e-7": "1.5e-7", "123456.789": "123456.789",
		"-2.50": "-2.5", "1.7976931348623157e308": "1.7976931348623157e308", "123456789012345678901": "1.2345678901234568e20", "12345678901234567890": "12345678901234567890",
	}
	for in, want := range cases {
		v, err := ParseString(in)
		require.NoError(t, err)
		require.Equal(t, want, String(v), in)
	}
}

func TestBlobHashVector(t *testing.T) {
	t.Parallel()
	// From upstream tests/builtins/blob_test.yaml, written in YAML.
	v, _, err := ParseYAML([]byte("message: \"Hello, blobs!\"\nnumber: 42\nnested:\n  array: [1, 2, 3]\n  boolean: true\n"), nil)
	require.NoError(t, err)
	sum := sha256.Sum256(Marshal(v))
	require.Equal(t, "868591347a854ba1d0f4875b2dd44e1e8335052af03725a9819f89e0142318b0", hex.EncodeToString(sum[:]))
}

func TestYAMLScalars(t *testing.T) {
	t.Parallel()
	sm := SourceMap{}
	v, _, err := ParseYAML([]byte("a: 1.0\nb: 2024-01-01 00:00:00+00:00\nc: yes\nd: True\ne: 0x10\nf: ~\ng: '1'\nh: [x, {i: 1_000}]\n"), sm)
	require.NoError(t, err)
	require.Equal(t, `{"a":1.0,"b":"2024-01-01 00:00:00+00:00","c":"yes","d":"True","e":16,"f":null,"g":"1","h":["x",{"i":1000}]}`, String(v))
	require.Equal(t, Pos{8, 12}, sm["$.h[1].i"])
	p, ok := sm.Lookup("$.h[1].i.deeper[3]")
	require.True(t, ok)
	require.Equal(t, Pos{8, 12}, p)
}

func TestYAMLRoundTrip(t *testing.T) {
	t.Parallel()
	v := MustParse(`{"s":"true","n":1.0,"i":2,"z":null,"l":"a\nb","o":{"k":["x"]}}`)
	out, err := MarshalYAML(v)
	require.NoError(t, err)
	back, _, err := ParseYAML(out, nil)
	require.NoError(t, err)
	require.Equal(t, String(v), String(back))
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	for in, msg := range map[string]string{
		`{"a":1,}`:   "1:8: expected string object key",
		"[1,\n 2 x]": "2:4: expected ',' or ']' in array",
		`"abc`:       "1:5: unexpected end of JSON input in string",
		`01`:         "1:2: trailing characters after JSON value",
		``:           "1:1: unexpected end of JSON input",
	} {
		_, err := ParseString(in)
		require.EqualError(t, err, msg, in)
	}
}

func TestEqual(t *testing.T) {
	t.Parallel()
	require.True(t, Equal(MustParse(`{"a":1,"b":[1.5]}`), MustParse(`{"b":[1.50],"a":1}`)))
	require.False(t, Equal(MustParse(`15`), MustParse(`15.0`)))
	require.False(t, Equal(MustParse(`{"a":1}`), MustParse(`{"a":1,"b":2}`)))
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{`{"a":[1,2.5,"x"]}`, `"\ud83d\ude00"`, `[[[]]]`, `-0.0e+1`, `{"a":1,"a":2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := Parse(data)
		if err != nil {
			return
		}
		out := Marshal(v)
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parse of %q failed: %v", out, err)
		}
		if !Equal(v, back) || string(Marshal(back)) != string(out) {
			t.Fatalf("round trip changed %q", out)
		}
	})
}

func BenchmarkParseEncode(b *testing.B) {
	line := []byte(`{"user_id":"user-000123","action":"process","payload":{"n":42,"score":0.75,"tags":["a","b","c"]}}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	var buf []byte
	for b.Loop() {
		v, err := Parse(line)
		if err != nil {
			b.Fatal(err)
		}
		buf = Append(buf[:0], v)
	}
}

func TestLargeObjectConcurrentLookup(t *testing.T) {
	o := NewObject(0)
	for i := range 100 {
		o.Set("k"+strconv.Itoa(i), Int(int64(i)))
	}
	o.Delete("k0")
	c := Clone(o).(*Object)
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 100 {
				for _, obj := range []*Object{o, c} {
					v, ok := obj.Get("k" + strconv.Itoa(i))
					if i == 0 {
						if ok {
							t.Errorf("k0 still present")
						}
						continue
					}
					if !ok || v != Int(int64(i)) {
						t.Errorf("k%d = %v, %v", i, v, ok)
					}
				}
				if obj, _ := o.Get("missing"); obj != nil {
					t.Errorf("missing key found")
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
}

func TestParseStrict(t *testing.T) {
	for _, tc := range []struct {
		in, err string
	}{
		{"{\"a\":\"x\xffy\"}", "1:8: invalid UTF-8 in string"},
		{"[\"ok\",\n \"\xc3\"]", "2:3: invalid UTF-8 in string"},
		{"{\"a\":\"\\n\xff\"}", "1:9: invalid UTF-8 in string"},
		{`{"a":"\ud800"}`, `1:7: unpaired UTF-16 surrogate escape in string`},
		{`{"a":"x\udc00y"}`, `1:8: unpaired UTF-16 surrogate escape in string`},
		{`{"a":"\ud800\u0041"}`, `1:7: unpaired UTF-16 surrogate escape in string`},
		{"{\"input\":1,\n\"input\":2}", `2:1: duplicate key "input" in object`},
		{`[{"a":{"b":1,"b":2}}]`, `1:14: duplicate key "b" in object`},
	} {
		_, err := ParseStrict([]byte(tc.in))
		require.EqualError(t, err, tc.err, "%q", tc.in)
		var se *SyntaxError
		require.ErrorAs(t, err, &se)
		v, err := Parse([]byte(tc.in))
		require.NoError(t, err, "Parse repairs %q", tc.in)
		require.NotNil(t, v)
	}
	for _, ok := range []string{`{"a":"\ud83d\ude00","b":"é","c":{"a":1}}`, `[]`, `"\u00e9"`, `{"a":{"a":{"a":1}}}`} {
		v, err := ParseStrict([]byte(ok))
		require.NoError(t, err, ok)
		require.Equal(t, Marshal(MustParse(ok)), Marshal(v))
	}
}
