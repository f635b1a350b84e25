package ignite

import (
	"encoding/hex"
	"reflect"
	"strings"
	"testing"
)

// The byte-exact vectors of crates/protocol/tests/python_vectors.rs, checked there against the
// Rust encoder: the Go codec agrees with it byte for byte.

func text(s string) string { return hex.EncodeToString([]byte(s)) }

func expect(t *testing.T, got []byte, parts ...string) {
	t.Helper()
	want := strings.ReplaceAll(strings.Join(parts, ""), " ", "")
	if hex.EncodeToString(got) != want {
		t.Fatalf("encoded\n%x\nwant\n%s", got, want)
	}
}

func TestHello(t *testing.T) {
	expect(t, appendHello(nil, "0.1.0"), "4947 08000000", "00", "01", "05", text("0.1.0"))
}

func TestResponse(t *testing.T) {
	b, ok := appendResponse(nil, 7, 200, [][2]string{{"content-type", "text/plain"}}, []byte("hello"))
	if !ok {
		t.Fatal("refused")
	}
	expect(t, b, "4947 23000000", "02", "07", "c801", "01", "0c", text("content-type"), "0a",
		text("text/plain"), "05", text("hello"))
	body := make([]byte, 300)
	for i := range body {
		body[i] = 0xff
	}
	b, _ = appendResponse(nil, 128, 204, [][2]string{{"x-é", "ü"}}, body)
	expect(t, b, "4947 3c010000", "02", "8001", "cc01", "01", "04", text("x-"), "c3a9", "02", "c3bc",
		"ac02", strings.Repeat("ff", 300))
}

func TestError(t *testing.T) {
	expect(t, appendError(nil, 7, kindPanic, 500, "boom"), "4947 0a000000", "03", "07", "01", "f403",
		"04", text("boom"))
	expect(t, appendError(nil, ^uint64(0), kindHandler, 418, "teapot"), "4947 15000000", "03",
		"ffffffffffffffffff01", "00", "a203", "06", text("teapot"))
}

func TestLog(t *testing.T) {
	expect(t, appendLog(nil, 7, "a log line"), "4947 0d000000", "04", "07", "0a", text("a log line"))
}

func unhex(t *testing.T, parts ...string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(strings.Join(parts, ""), " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestInvoke(t *testing.T) {
	body := `{"message":"hi there"}`
	frame := unhex(t, "4947 6f000000", "01", "07", "09", text("01JABCDEF"), "0e", text("acme-corp/tiny"),
		"80d095ffbc31", "01", "08", text("GREETING"), "02", text("hi"), "04", text("POST"), "01",
		text("/"), "03", text("a=1"), "01", "0c", text("content-type"), "10", text("application/json"),
		"16", text(body))
	n, err := checkHeader(frame[:headerLen])
	if err != nil || n != len(frame)-headerLen {
		t.Fatalf("header: %d %v", n, err)
	}
	variant, inv, err := decodeFrame(frame[headerLen:])
	if err != nil || variant != frameInvoke {
		t.Fatalf("decode: %d %v", variant, err)
	}
	want := &invoke{
		id: 7, executionID: "01JABCDEF", functionID: "acme-corp/tiny", deadlineUnixMs: 1_700_000_000_000,
		env: [][2]string{{"GREETING", "hi"}}, method: "POST", path: "/", query: "a=1",
		headers: [][2]string{{"content-type", "application/json"}}, body: []byte(body),
	}
	if !reflect.DeepEqual(inv, want) {
		t.Fatalf("decoded %+v\nwant %+v", inv, want)
	}
	// Every truncation of the payload is refused, never a panic.
	for i := 0; i < n; i++ {
		if _, _, err := decodeFrame(frame[headerLen : headerLen+i]); err == nil {
			t.Fatalf("a payload cut at %d decoded", i)
		}
	}
}

func TestShutdownAndBadFrames(t *testing.T) {
	frame := unhex(t, "4947 01000000", "05")
	if variant, _, err := decodeFrame(frame[headerLen:]); err != nil || variant != frameShutdown {
		t.Fatalf("%d %v", variant, err)
	}
	if _, err := checkHeader([]byte("hello!")); err == nil || !strings.Contains(err.Error(), "not a runtime frame") {
		t.Fatal(err)
	}
	if _, err := checkHeader(unhex(t, "4947 01000001")); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatal(err)
	}
	if _, _, err := decodeFrame([]byte{9}); err == nil {
		t.Fatal("variant 9 decoded")
	}
	// A 10-byte varint past 64 bits.
	if _, _, err := decodeFrame(unhex(t, "01", "ffffffffffffffffff02")); err == nil {
		t.Fatal("an id over 64 bits decoded")
	}
}

func TestTooLargeResponse(t *testing.T) {
	b, ok := appendResponse([]byte("x"), 1, 200, nil, make([]byte, maxFrameLen))
	if ok || string(b) != "x" {
		t.Fatal("a response over the frame limit was encoded")
	}
	frame := replyFrame(nil, 1, Bytes(make([]byte, maxFrameLen)), nil)
	if frame[headerLen] != frameError {
		t.Fatal("not an error frame")
	}
}

func TestResponseStatus(t *testing.T) {
	for status, want := range map[int]string{0: "c801", 201: "c901", 42: "f403", 1000: "f403"} {
		frame := replyFrame(nil, 1, &Response{Status: status}, nil)
		if frame[headerLen] == frameError {
			frame = frame[headerLen+3:]
		} else {
			frame = frame[headerLen+2:]
		}
		if got := hex.EncodeToString(frame[:2]); got != want {
			t.Fatalf("status %d: %s, want %s", status, got, want)
		}
	}
}
