package value

import (
	"math"
	"strconv"
	"unicode/utf8"
)

// Marshal returns the compact JSON encoding of v.
func Marshal(v Value) []byte { return Append(nil, v) }

// String returns the compact JSON encoding of v as a string.
func String(v Value) string { return string(Append(nil, v)) }

// Append appends the compact JSON encoding of v to dst, byte for byte as
// serde_json writes it: no whitespace, no HTML escaping, non-ASCII text
// unescaped, key order kept.
func Append(dst []byte, v Value) []byte {
	switch t := v.(type) {
	case nil:
		return append(dst, "null"...)
	case bool:
		if t {
			return append(dst, "true"...)
		}
		return append(dst, "false"...)
	case Number:
		if t == "" {
			return append(dst, '0')
		}
		return append(dst, t...)
	case string:
		return AppendString(dst, t)
	case []Value:
		dst = append(dst, '[')
		for i, e := range t {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = Append(dst, e)
		}
		return append(dst, ']')
	case *Object:
		if t == nil {
			return append(dst, "null"...)
		}
		dst = append(dst, '{')
		for i, k := range t.keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = AppendString(dst, k)
			dst = append(dst, ':')
			dst = Append(dst, t.vals[i])
		}
		return append(dst, '}')
	default:
		return Append(dst, FromGo(v))
	}
}

const hexDigits = "0123456789abcdef"

// AppendString appends s as a JSON string literal with serde_json's
// escaping: `"`, `\` and control characters only. Invalid UTF-8 is
// replaced with U+FFFD so the output is always valid JSON text.
func AppendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, s[start:i]...)
				dst = append(dst, "\uFFFD"...)
				i++
				start = i
				continue
			}
			i += size
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"':
			dst = append(dst, '\\', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// formatFloat writes f the way Rust's ryu (and so serde_json) does: the
// shortest round-tripping digits, in plain notation with a ".0" for
// integral values when the decimal point falls within 16 digits, and in
// scientific notation ("1e16", "1.5e-7") otherwise.
func formatFloat(f float64) string {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "null"
	}
	if f == 0 {
		if math.Signbit(f) {
			return "-0.0"
		}
		return "0.0"
	}
	// 'e' with -1 precision gives the shortest digits: d.ddddde±XX.
	s := strconv.FormatFloat(f, 'e', -1, 64)
	neg := s[0] == '-'
	if neg {
		s = s[1:]
	}
	epos := 0
	for i := range len(s) {
		if s[i] == 'e' {
			epos = i
			break
		}
	}
	mant, expText := s[:epos], s[epos+1:]
	exp, _ := strconv.Atoi(expText)
	digits := make([]byte, 0, len(mant))
	for i := range len(mant) {
		if mant[i] != '.' {
			digits = append(digits, mant[i])
		}
	}
	n := len(digits)
	// value = 0.digits * 10^kk
	kk := exp + 1
	k := kk - n // value = digits * 10^k
	out := make([]byte, 0, 24)
	if neg {
		out = append(out, '-')
	}
	switch {
	case k >= 0 && kk <= 16:
		out = append(out, digits...)
		for range k {
			out = append(out, '0')
		}
		out = append(out, '.', '0')
	case kk > 0 && kk <= 16:
		out = append(out, digits[:kk]...)
		out = append(out, '.')
		out = append(out, digits[kk:]...)
	case kk > -5 && kk <= 0:
		out = append(out, '0', '.')
		for range -kk {
			out = append(out, '0')
		}
		out = append(out, digits...)
	case n == 1:
		out = append(out, digits[0], 'e')
		out = strconv.AppendInt(out, int64(kk-1), 10)
	default:
		out = append(out, digits[0], '.')
		out = append(out, digits[1:]...)
		out = append(out, 'e')
		out = strconv.AppendInt(out, int64(kk-1), 10)
	}
	return string(out)
}

// canonicalNumber returns the canonical text of a JSON number literal:
// integers that fit 64 bits are kept verbatim, everything else is
// formatted as a float.
func canonicalNumber(text string) Number {
	isInt := true
	for i := range len(text) {
		switch text[i] {
		case '.', 'e', 'E':
			isInt = false
		}
	}
	if isInt {
		if len(text) < 19 {
			return Number(text)
		}
		if _, err := strconv.ParseInt(text, 10, 64); err == nil {
			return Number(text)
		}
		if _, err := strconv.ParseUint(text, 10, 64); err == nil {
			return Number(text)
		}
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil || math.IsInf(f, 0) {
		return Number(text)
	}
	return Number(formatFloat(f))
}
