package ignite

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The fast paths against encoding/json: the same bytes, the same values.

func TestFastEncodingMatchesEncodingJSON(t *testing.T) {
	type point struct{ X, Y int }
	values := []any{
		nil, "", "hi", "quote \" backslash \\ nl \n cr \r tab \t bell \a del \x7f <html> & é ü 日本",
		"bad utf8 \xff\xfe", "separators \u2028 \u2029", true, false,
		0, -1, math.MaxInt64, math.MinInt64, uint64(math.MaxUint64), int8(-8), uint16(16),
		0.0, -0.0, 1.5, 1e20, 1e21, 1e-6, 1e-7, 123456789.125, math.SmallestNonzeroFloat64,
		math.MaxFloat64, float32(3.14), float32(1e-7), float32(1e21),
		map[string]any{"b": 1, "a": "x", "c": []any{1, "2", nil, map[string]any{}}},
		map[string]any(nil), []any(nil), []string(nil), map[string]string(nil),
		map[string]string{"z": "1", "é": "2", "\x01": "3"}, []string{"a", "\n"}, []any{},
		map[string]any{"time": time.Unix(0, 0).UTC(), "point": point{1, 2}, "raw": json.RawMessage(`{"a" : 1}`)},
		map[string]any{"nested": map[string]any{"deeper": []any{[]any{[]any{1.25}}}}},
	}
	for _, v := range values {
		want, err := encodeJSON(v)
		if err != nil {
			t.Fatalf("%#v: %v", v, err)
		}
		got, err := appendJSON(nil, v, 0)
		if err != nil || string(got) != string(want) {
			t.Fatalf("%#v:\n got %s (%v)\nwant %s", v, got, err, want)
		}
	}
	for _, bad := range []any{math.NaN(), math.Inf(1), map[string]any{"x": math.Inf(-1)}, make(chan int)} {
		_, want := encodeJSON(bad)
		_, got := appendJSON(nil, bad, 0)
		if want == nil || got == nil || got.Error() != want.Error() {
			t.Fatalf("%v: got %v want %v", bad, got, want)
		}
	}
	// Deep values and cycles go to encoding/json (which refuses a cycle).
	deep := any("leaf")
	for i := 0; i < 100; i++ {
		deep = []any{deep}
	}
	want, _ := encodeJSON(deep)
	if got, err := appendJSON(nil, deep, 0); err != nil || string(got) != string(want) {
		t.Fatal("deep value", err)
	}
	cycle := map[string]any{}
	cycle["self"] = cycle
	if _, err := appendJSON(nil, cycle, 0); err == nil {
		t.Fatal("a cycle was encoded")
	}
}

func randomString(r *rand.Rand) string {
	alphabet := []string{"a", "Z", "0", " ", "\"", "\\", "\n", "\x00", "\x1f", "é", "日", "\u2028", "\xff", "<", "/"}
	var b strings.Builder
	for i := r.Intn(8); i > 0; i-- {
		b.WriteString(alphabet[r.Intn(len(alphabet))])
	}
	return b.String()
}

func randomValue(r *rand.Rand, depth int) any {
	switch n := r.Intn(9); {
	case n == 0 || depth > 3:
		return randomString(r)
	case n == 1:
		return r.Int63() - r.Int63()
	case n == 2:
		return (r.Float64() - 0.5) * math.Pow(10, float64(r.Intn(60)-30))
	case n == 3:
		return r.Intn(2) == 0
	case n == 4:
		return nil
	case n == 5:
		m := map[string]any{}
		for i := r.Intn(4); i > 0; i-- {
			m[randomString(r)] = randomValue(r, depth+1)
		}
		return m
	case n == 6:
		var s []any
		for i := r.Intn(4); i > 0; i-- {
			s = append(s, randomValue(r, depth+1))
		}
		return s
	case n == 7:
		return []string{randomString(r)}
	default:
		return map[string]string{randomString(r): randomString(r)}
	}
}

func TestFastEncodingMatchesOnRandomValues(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 20000; i++ {
		v := randomValue(r, 0)
		want, err := encodeJSON(v)
		if err != nil {
			t.Fatal(err)
		}
		got, err := appendJSON(nil, v, 0)
		if err != nil || string(got) != string(want) {
			t.Fatalf("%#v:\n got %s (%v)\nwant %s", v, got, err, want)
		}
		// And the body that comes back decodes as encoding/json decodes it.
		body := []byte(fmt.Sprintf(`{"v": %s, "w": [%s]}`, want, want))
		checkFields(t, body)
	}
}

// checkFields: objectFields either declines or agrees with encoding/json.
func checkFields(t *testing.T, body []byte) {
	t.Helper()
	fields, ok := objectFields(body)
	var want map[string]json.RawMessage
	err := json.Unmarshal(body, &want)
	if !ok {
		return
	}
	if err != nil || want == nil {
		t.Fatalf("%q: accepted, but encoding/json says %v", body, err)
	}
	if len(fields) != len(want) {
		t.Fatalf("%q: %d fields, encoding/json %d", body, len(fields), len(want))
	}
	for k, raw := range fields {
		var a, b any
		if json.Unmarshal(raw, &a) != nil || json.Unmarshal(want[k], &b) != nil || !reflect.DeepEqual(a, b) {
			t.Fatalf("%q: field %q is %s, encoding/json says %s", body, k, raw, want[k])
		}
	}
}

func TestObjectFields(t *testing.T) {
	accepted := []string{
		`{}`, ` { } `, `{"a":1}`, `{"a": "x", "b": [1, 2, {"c": null}], "d": true, "e": -0.5e+10}`,
		`{"a": 1, "a": 2}`, `{"s": "esc \" \\ \/ \b \f \n \r \t \u00e9"}`, "{\"a\":\n1}\n",
	}
	for _, body := range accepted {
		if _, ok := objectFields([]byte(body)); !ok {
			t.Fatalf("%q declined", body)
		}
		checkFields(t, []byte(body))
	}
	declined := []string{
		``, `[]`, `"x"`, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":1}x`, `{"a":01}`, `{"a":1.}`,
		`{"a":.5}`, `{"a":-}`, `{"a":1e}`, `{"a":tru}`, `{"a":nul}`, "{\"a\":\"\x01\"}", `{"a":"\x"}`,
		`{"a":"\u12"}`, `{"a":[1,]}`, `{"a":[1 2]}`, `{"a":{"b":1,}}`, `{"\u0061":1}`, `{a:1}`,
		`{"a":1}{}`, `{"a":"unterminated}`, strings.Repeat("[", 600) + strings.Repeat("]", 600),
	}
	for _, body := range declined {
		if _, ok := objectFields([]byte(body)); ok {
			t.Fatalf("%q accepted", body)
		}
		checkFields(t, []byte(body))
	}
	if f, _ := objectFields([]byte(`{"a": 1, "a": 2}`)); string(f["a"]) != "2" {
		t.Fatal("the last of a repeated key wins")
	}
}

func TestFuzzObjectFields(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	pieces := []string{"{", "}", "[", "]", ",", ":", `"a"`, `"b\"c"`, "1", "-2.5e3", "true", "null", " ", "\"", "\\", "x", "0", ".", "e"}
	for i := 0; i < 50000; i++ {
		var b strings.Builder
		b.WriteString("{")
		for j := r.Intn(12); j > 0; j-- {
			b.WriteString(pieces[r.Intn(len(pieces))])
		}
		checkFields(t, []byte(b.String()))
	}
}

func TestDecodeFastMatchesUnmarshal(t *testing.T) {
	raws := []string{`"x"`, `"é"`, `"a\nb"`, `""`, `1`, `-7`, `0`, `1.5`, `1e3`, `-0`, `true`, `false`, `null`,
		`99999999999999999999`, `"\xff"`, `[1]`, `{"a":1}`, `1e400`}
	for _, raw := range raws {
		check := func(fast, slow any) {
			okFast := decodeFast([]byte(raw), fast)
			errSlow := json.Unmarshal([]byte(raw), slow)
			if okFast && (errSlow != nil || !reflect.DeepEqual(fast, slow)) {
				t.Fatalf("%s into %T: fast %v, encoding/json %v (%v)", raw, fast,
					reflect.ValueOf(fast).Elem(), reflect.ValueOf(slow).Elem(), errSlow)
			}
		}
		var s1, s2 string
		check(&s1, &s2)
		var b1, b2 bool
		check(&b1, &b2)
		var i1, i2 int
		check(&i1, &i2)
		var l1, l2 int64
		check(&l1, &l2)
		var f1, f2 float64
		check(&f1, &f2)
	}
	var s string
	if !decodeFast([]byte(`"hi there"`), &s) || s != "hi there" {
		t.Fatal(s)
	}
}
