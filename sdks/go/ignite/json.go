package ignite

// Reflection-free JSON for the request path: encoding/json builds its per-type codecs by
// reflection on first use (tens of microseconds per type, paid by the instance's first
// request, a cold start) and allocates more on every call. The common shapes (a JSON-object
// body read with Field, a handler returning maps, slices, strings and numbers) are handled
// here, byte for byte as encoding/json would (without HTML escaping); anything else falls back
// to encoding/json.

import (
	"encoding/json"
	"math"
	"sort"
	"strconv"
	"unicode/utf8"
)

// maxFastDepth bounds the recursion of the fast encoder; deeper values (or cycles) go to
// encoding/json, which detects cycles.
const maxFastDepth = 32

const hexDigits = "0123456789abcdef"

// appendJSON appends v encoded as JSON.
func appendJSON(b []byte, v any, depth int) ([]byte, error) {
	if depth > maxFastDepth {
		return appendSlow(b, v)
	}
	switch x := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		return appendString(b, x), nil
	case bool:
		return strconv.AppendBool(b, x), nil
	case int:
		return strconv.AppendInt(b, int64(x), 10), nil
	case int8:
		return strconv.AppendInt(b, int64(x), 10), nil
	case int16:
		return strconv.AppendInt(b, int64(x), 10), nil
	case int32:
		return strconv.AppendInt(b, int64(x), 10), nil
	case int64:
		return strconv.AppendInt(b, x, 10), nil
	case uint:
		return strconv.AppendUint(b, uint64(x), 10), nil
	case uint8:
		return strconv.AppendUint(b, uint64(x), 10), nil
	case uint16:
		return strconv.AppendUint(b, uint64(x), 10), nil
	case uint32:
		return strconv.AppendUint(b, uint64(x), 10), nil
	case uint64:
		return strconv.AppendUint(b, x, 10), nil
	case float64:
		return appendFloat(b, x, 64, v)
	case float32:
		return appendFloat(b, float64(x), 32, v)
	case map[string]any:
		if x == nil {
			return append(b, "null"...), nil
		}
		keys := sortedKeys(x)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(appendString(b, k), ':')
			var err error
			if b, err = appendJSON(b, x[k], depth+1); err != nil {
				return b, err
			}
		}
		return append(b, '}'), nil
	case map[string]string:
		if x == nil {
			return append(b, "null"...), nil
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(append(appendString(b, k), ':'), x[k])
		}
		return append(b, '}'), nil
	case []any:
		if x == nil {
			return append(b, "null"...), nil
		}
		b = append(b, '[')
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = appendJSON(b, e, depth+1); err != nil {
				return b, err
			}
		}
		return append(b, ']'), nil
	case []string:
		if x == nil {
			return append(b, "null"...), nil
		}
		b = append(b, '[')
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, e)
		}
		return append(b, ']'), nil
	}
	return appendSlow(b, v)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// appendSlow appends what encoding/json makes of v.
func appendSlow(b []byte, v any) ([]byte, error) {
	enc, err := encodeJSON(v)
	if err != nil {
		return b, err
	}
	return append(b, enc...), nil
}

// appendFloat is encoding/json's float encoding (ES6 number formatting).
func appendFloat(b []byte, f float64, bits int, v any) ([]byte, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		// encoding/json's error, with its message.
		return appendSlow(b, v)
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 {
		if bits == 64 && (abs < 1e-6 || abs >= 1e21) ||
			bits == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			format = 'e'
		}
	}
	b = strconv.AppendFloat(b, f, format, -1, bits)
	if format == 'e' {
		// e-09 → e-9
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, nil
}

// appendString is encoding/json's string encoding without HTML escaping.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// scanner checks JSON without decoding it. It accepts only valid JSON (what it cannot vouch
// for, the caller hands to encoding/json, whose error messages the SDK reports).
type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// str skips a string at s.i; escaped reports whether it held a backslash.
func (s *scanner) str() (ok, escaped bool) {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return false, false
	}
	s.i++
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return true, escaped
		case c < 0x20:
			return false, escaped
		case c == '\\':
			escaped = true
			if s.i+1 >= len(s.b) {
				return false, escaped
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if s.i+6 > len(s.b) {
					return false, escaped
				}
				for _, h := range s.b[s.i+2 : s.i+6] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return false, escaped
					}
				}
				s.i += 6
			default:
				return false, escaped
			}
		default:
			s.i++
		}
	}
	return false, escaped
}

func (s *scanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

func (s *scanner) number() bool {
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	if s.i < len(s.b) && s.b[s.i] == '0' {
		s.i++
	} else if !s.digits() {
		return false
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if !s.digits() {
			return false
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if !s.digits() {
			return false
		}
	}
	return true
}

func (s *scanner) literal(word string) bool {
	if len(s.b)-s.i < len(word) || string(s.b[s.i:s.i+len(word)]) != word {
		return false
	}
	s.i += len(word)
	return true
}

// value skips one JSON value at s.i.
func (s *scanner) value(depth int) bool {
	if s.i >= len(s.b) || depth > 512 {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		ok, _ := s.str()
		return ok
	case c == '{':
		s.i++
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == '}' {
			s.i++
			return true
		}
		for {
			s.ws()
			if ok, _ := s.str(); !ok {
				return false
			}
			s.ws()
			if s.i >= len(s.b) || s.b[s.i] != ':' {
				return false
			}
			s.i++
			s.ws()
			if !s.value(depth + 1) {
				return false
			}
			s.ws()
			if s.i >= len(s.b) {
				return false
			}
			if s.b[s.i] == '}' {
				s.i++
				return true
			}
			if s.b[s.i] != ',' {
				return false
			}
			s.i++
		}
	case c == '[':
		s.i++
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == ']' {
			s.i++
			return true
		}
		for {
			s.ws()
			if !s.value(depth + 1) {
				return false
			}
			s.ws()
			if s.i >= len(s.b) {
				return false
			}
			if s.b[s.i] == ']' {
				s.i++
				return true
			}
			if s.b[s.i] != ',' {
				return false
			}
			s.i++
		}
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		return s.number()
	}
	return false
}

// objectFields splits a JSON-object body into its fields' raw values (the last of a repeated
// key wins, as with encoding/json); ok is false when the body is not an object this scanner
// can vouch for (a key with escapes, say), for encoding/json to judge.
func objectFields(body []byte) (fields map[string]json.RawMessage, ok bool) {
	s := scanner{b: body}
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return nil, false
	}
	s.i++
	fields = make(map[string]json.RawMessage, 8)
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
	} else {
		for {
			s.ws()
			start := s.i
			ok, escaped := s.str()
			if !ok || escaped {
				return nil, false
			}
			key := string(s.b[start+1 : s.i-1])
			s.ws()
			if s.i >= len(s.b) || s.b[s.i] != ':' {
				return nil, false
			}
			s.i++
			s.ws()
			start = s.i
			if !s.value(1) {
				return nil, false
			}
			fields[key] = json.RawMessage(s.b[start:s.i:s.i])
			s.ws()
			if s.i >= len(s.b) {
				return nil, false
			}
			if s.b[s.i] == '}' {
				s.i++
				break
			}
			if s.b[s.i] != ',' {
				return nil, false
			}
			s.i++
		}
	}
	s.ws()
	if s.i != len(s.b) {
		return nil, false
	}
	return fields, true
}

// decodeFast decodes a raw value the scanner accepted into the common field types, as
// json.Unmarshal would; false leaves it to json.Unmarshal (other types, and every error).
func decodeFast(raw []byte, v any) bool {
	switch p := v.(type) {
	case *string:
		if len(raw) < 2 || raw[0] != '"' {
			return false
		}
		inner := raw[1 : len(raw)-1]
		for _, c := range inner {
			if c == '\\' {
				return false
			}
		}
		if !utf8.Valid(inner) {
			return false
		}
		*p = string(inner)
		return true
	case *bool:
		switch string(raw) {
		case "true":
			*p = true
			return true
		case "false":
			*p = false
			return true
		}
	case *int:
		n, err := strconv.ParseInt(string(raw), 10, strconv.IntSize)
		if err == nil {
			*p = int(n)
			return true
		}
	case *int64:
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err == nil {
			*p = n
			return true
		}
	case *float64:
		if len(raw) > 0 && (raw[0] == '-' || '0' <= raw[0] && raw[0] <= '9') {
			f, err := strconv.ParseFloat(string(raw), 64)
			if err == nil {
				*p = f
				return true
			}
		}
	}
	return false
}
