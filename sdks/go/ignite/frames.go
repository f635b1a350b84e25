package ignite

// The frames spoken with the node agent (crates/protocol in the platform's repository): every
// frame is the two bytes "IG", the payload's length as a little-endian uint32, and the payload,
// a postcard encoding of the Rust enum `Frame` (a varint variant index, then the fields in
// order: LEB128 varints for integers and lengths, strings and byte strings as length + bytes).

import (
	"encoding/binary"
	"errors"
	"strconv"
)

const (
	// ProtocolVersion is the framing protocol version sent in the Hello frame.
	ProtocolVersion = 1
	headerLen       = 6
	// maxFrameLen is the largest payload either side accepts (16 MiB).
	maxFrameLen = 16 << 20
)

// Frame variants, in the order of the Rust enum.
const (
	frameHello    = 0
	frameInvoke   = 1
	frameResponse = 2
	frameError    = 3
	frameLog      = 4
	frameShutdown = 5
)

// Error kinds, in the order of the Rust enum.
const (
	kindHandler = 0
	kindPanic   = 1
)

var (
	errTruncated = errors.New("framing error: the channel closed mid-frame")
	errMalformed = errors.New("framing error: malformed frame payload")
)

// invoke is one request, as the agent sent it.
type invoke struct {
	id             uint64
	executionID    string
	functionID     string
	deadlineUnixMs uint64
	env            [][2]string
	method         string
	path           string
	query          string
	headers        [][2]string
	body           []byte
}

// begin appends a frame header with a zero length; finish fills the length in.
func begin(b []byte) []byte { return append(b, 'I', 'G', 0, 0, 0, 0) }

// finish fills in the length of the frame that starts at b[start]; false if the payload is
// over the limit.
func finish(b []byte, start int) bool {
	n := len(b) - start - headerLen
	if n > maxFrameLen {
		return false
	}
	binary.LittleEndian.PutUint32(b[start+2:], uint32(n))
	return true
}

func putUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func putString(b []byte, s string) []byte {
	return append(putUvarint(b, uint64(len(s))), s...)
}

func putPairs(b []byte, pairs [][2]string) []byte {
	b = putUvarint(b, uint64(len(pairs)))
	for _, p := range pairs {
		b = putString(putString(b, p[0]), p[1])
	}
	return b
}

func appendHello(b []byte, sdkVersion string) []byte {
	start := len(b)
	b = begin(b)
	b = append(b, frameHello)
	b = putUvarint(b, ProtocolVersion)
	b = putString(b, sdkVersion)
	finish(b, start)
	return b
}

// appendResponse appends a Response frame; false (and b unchanged) when it is over the limit.
func appendResponse(b []byte, id uint64, status uint16, headers [][2]string, body []byte) ([]byte, bool) {
	start := len(b)
	b = begin(b)
	b = append(b, frameResponse)
	b = putUvarint(b, id)
	b = putUvarint(b, uint64(status))
	b = putPairs(b, headers)
	b = putUvarint(b, uint64(len(body)))
	b = append(b, body...)
	if !finish(b, start) {
		return b[:start], false
	}
	return b, true
}

func appendError(b []byte, id uint64, kind byte, status uint16, message string) []byte {
	if len(message) > maxFrameLen-64 {
		message = message[:maxFrameLen-64]
	}
	start := len(b)
	b = begin(b)
	b = append(b, frameError)
	b = putUvarint(b, id)
	b = append(b, kind)
	b = putUvarint(b, uint64(status))
	b = putString(b, message)
	finish(b, start)
	return b
}

func appendLog(b []byte, id uint64, line string) []byte {
	if len(line) > maxFrameLen-64 {
		line = line[:maxFrameLen-64]
	}
	start := len(b)
	b = begin(b)
	b = append(b, frameLog)
	b = putUvarint(b, id)
	b = putString(b, line)
	finish(b, start)
	return b
}

// decoder reads postcard values from one payload.
type decoder struct {
	b   []byte
	bad bool
}

func (d *decoder) uvarint(max uint64) uint64 {
	var v uint64
	for shift := uint(0); shift < 70; shift += 7 {
		if len(d.b) == 0 {
			d.bad = true
			return 0
		}
		c := d.b[0]
		d.b = d.b[1:]
		if shift == 63 && c > 1 {
			d.bad = true
			return 0
		}
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			if v > max {
				d.bad = true
				return 0
			}
			return v
		}
	}
	d.bad = true
	return 0
}

func (d *decoder) bytes() []byte {
	n := d.uvarint(maxFrameLen)
	if d.bad || n > uint64(len(d.b)) {
		d.bad = true
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string { return string(d.bytes()) }

func (d *decoder) pairs() [][2]string {
	n := d.uvarint(maxFrameLen)
	// Each pair takes at least two bytes: the count cannot exceed what is left.
	if d.bad || n > uint64(len(d.b)/2) {
		d.bad = true
		return nil
	}
	if n == 0 {
		return nil
	}
	pairs := make([][2]string, n)
	for i := range pairs {
		pairs[i] = [2]string{d.string(), d.string()}
	}
	return pairs
}

// decodeFrame decodes a payload: the frame's variant and, for an Invoke, the request. The
// request owns its memory (nothing points into payload).
func decodeFrame(payload []byte) (variant uint64, inv *invoke, err error) {
	d := decoder{b: payload}
	variant = d.uvarint(frameShutdown)
	if d.bad {
		return 0, nil, errMalformed
	}
	if variant != frameInvoke {
		return variant, nil, nil
	}
	inv = &invoke{
		id:             d.uvarint(^uint64(0)),
		executionID:    d.string(),
		functionID:     d.string(),
		deadlineUnixMs: d.uvarint(^uint64(0)),
		env:            d.pairs(),
		method:         d.string(),
		path:           d.string(),
		query:          d.string(),
		headers:        d.pairs(),
	}
	if body := d.bytes(); len(body) > 0 {
		inv.body = append([]byte(nil), body...)
	}
	if d.bad {
		return 0, nil, errMalformed
	}
	return variant, inv, nil
}

// checkHeader returns the payload length a frame header announces.
func checkHeader(h []byte) (int, error) {
	if h[0] != 'I' || h[1] != 'G' {
		return 0, errors.New("framing error: the agent sent bytes that are not a runtime frame (they start with " +
			strconv.Quote(string(h)) + ")")
	}
	n := binary.LittleEndian.Uint32(h[2:])
	if n > maxFrameLen {
		return 0, errors.New("framing error: a frame of " + strconv.FormatUint(uint64(n), 10) +
			" bytes exceeds the " + strconv.Itoa(maxFrameLen) + "-byte limit")
	}
	return int(n), nil
}
