// Package ignite is the Ignite SDK for Go handlers.
//
//	package main
//
//	import "ignite.dev/sdk/ignite"
//
//	func handler(req *ignite.Request, ctx *ignite.Context) (any, error) {
//		message := ignite.FieldOr(req, "message", "Hello from Go!")
//		return map[string]any{"message": message, "execution_id": ctx.ExecutionID()}, nil
//	}
//
//	func main() { ignite.Main(handler) }
//
// A handler returns what it answers with: any value encoding/json can marshal (sent as JSON),
// a string (UTF-8 text), a []byte (application/octet-stream), a *Response (Text, Bytes,
// Respond, JSON) or nil (204 No Content); or an error: Error(status, message) answers with that
// status, any other error 500 with its message. A panic answers 500 and the instance serves on.
//
// Requests run on goroutines of their own: with the app's concurrency above 1, several are in
// flight at once. The package uses the standard library alone.
package ignite

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"sync"
	"time"
)

// Version is the SDK's version, sent to the agent in the Hello frame.
const Version = "0.1.0"

// Handler is the function Main serves.
type Handler func(req *Request, ctx *Context) (any, error)

// -------------------------------------------------------------------------------------------
// Errors.

// StatusError is a handler error with the HTTP status it answers with. Error makes one; so do
// Field and Body for a request they cannot read (400).
type StatusError struct {
	Status  int
	Message string
}

func (e *StatusError) Error() string { return e.Message }

// Error returns an error that answers with this HTTP status and message:
// `return nil, ignite.Error(404, "no such user")`. It may be wrapped (fmt.Errorf with %w):
// the status is found with errors.As, and the message is the whole error's.
func Error(status int, message string) error {
	return &StatusError{Status: status, Message: message}
}

// Errorf is Error with a fmt format.
func Errorf(status int, format string, args ...any) error {
	return &StatusError{Status: status, Message: fmt.Sprintf(format, args...)}
}

// statusOf is the status an error answers with: a StatusError's (100 to 999), else 500.
func statusOf(err error) uint16 {
	var se *StatusError
	if errors.As(err, &se) && se.Status >= 100 && se.Status <= 999 {
		return uint16(se.Status)
	}
	return 500
}

func badRequest(message string) error { return &StatusError{Status: 400, Message: message} }

// -------------------------------------------------------------------------------------------
// The request.

// Request is the request a handler answers: its HTTP method, path, query and headers, and its
// body, with typed access to a JSON body (Field, FieldOr, Body).
type Request struct {
	method  string
	path    string
	query   string
	headers [][2]string
	body    []byte

	once   sync.Once
	fields map[string]json.RawMessage
	// Why the body has no fields, when it has none (nil for an empty body).
	fieldsErr func(key string) error
}

// NewRequest makes a request, for unit-testing a handler without the platform.
func NewRequest(method, path string, body []byte) *Request {
	return &Request{method: method, path: path, body: body}
}

// WithQuery sets the raw query string (without '?'); for unit tests.
func (r *Request) WithQuery(query string) *Request {
	r.query = query
	return r
}

// WithHeader adds a header (its name lowercased); for unit tests.
func (r *Request) WithHeader(name, value string) *Request {
	r.headers = append(r.headers, [2]string{strings.ToLower(name), value})
	return r
}

// Raw is the body's bytes, exactly as sent.
func (r *Request) Raw() []byte { return r.body }

// Method is GET, POST, ... (POST for an API invoke).
func (r *Request) Method() string { return r.method }

// Path is the request path, starting with '/'.
func (r *Request) Path() string { return r.path }

// Query is the raw query string, without '?' (empty when there is none).
func (r *Request) Query() string { return r.query }

// Headers are all the request's headers, in arrival order, names lowercase.
func (r *Request) Headers() [][2]string { return r.headers }

// Header is the first value of a header, its name matched case-insensitively ("" if absent).
func (r *Request) Header(name string) string {
	for _, h := range r.headers {
		if strings.EqualFold(h[0], name) {
			return h[1]
		}
	}
	return ""
}

func jsonKind(raw []byte) string {
	switch raw[0] {
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	case '"':
		return "a string"
	case '[':
		return "an array"
	case '{':
		return "an object"
	}
	return "a number"
}

// jsonError is encoding/json's message without its "json: " prefix.
func jsonError(err error) string {
	return strings.TrimPrefix(err.Error(), "json: ")
}

func (r *Request) parse() {
	r.once.Do(func() {
		if len(r.body) == 0 {
			return
		}
		if fields, ok := objectFields(r.body); ok {
			r.fields = fields
			return
		}
		var fields map[string]json.RawMessage
		err := json.Unmarshal(r.body, &fields)
		if err == nil && fields != nil {
			r.fields = fields
			return
		}
		if json.Valid(r.body) {
			kind := jsonKind(bytes.TrimLeft(r.body, " \t\r\n"))
			r.fieldsErr = func(key string) error {
				return badRequest(fmt.Sprintf(
					"missing field `%s`: the request body is JSON %s , not an object", key, kind))
			}
			return
		}
		r.fieldsErr = func(key string) error {
			return badRequest(fmt.Sprintf(
				"missing field `%s`: the request body is not JSON (%s)", key, jsonError(err)))
		}
	})
}

// field is the raw JSON of one field of the body.
func (r *Request) field(key string) (json.RawMessage, error) {
	r.parse()
	if r.fieldsErr != nil {
		return nil, r.fieldsErr(key)
	}
	raw, ok := r.fields[key]
	if !ok {
		return nil, badRequest(fmt.Sprintf("missing field `%s` in the request body", key))
	}
	return raw, nil
}

// nilable reports whether JSON null is a value of t (a pointer, interface, map or slice).
func nilable(t reflect.Type) bool {
	if t == nil {
		return true
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice:
		return true
	}
	return false
}

// Field is one field of a JSON-object body, decoded into T. It fails with a 400 error naming
// the key when the key is absent (an empty body has no fields) or its value does not fit T
// (null fits only a pointer, interface, map or slice).
func Field[T any](req *Request, key string) (T, error) {
	var v T
	raw, err := req.field(key)
	if err != nil {
		return v, err
	}
	if string(raw) == "null" {
		if t := reflect.TypeOf(&v).Elem(); !nilable(t) {
			return v, badRequest(fmt.Sprintf(
				"invalid field `%s` in the request body: null, expected %s", key, t))
		}
		return v, nil
	}
	if decodeFast(raw, &v) {
		return v, nil
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		var zero T
		return zero, badRequest(fmt.Sprintf(
			"invalid field `%s` in the request body: %s", key, jsonError(err)))
	}
	return v, nil
}

// FieldOr is Field, with def when the field is missing or does not fit T.
func FieldOr[T any](req *Request, key string, def T) T {
	v, err := Field[T](req, key)
	if err != nil {
		return def
	}
	return v
}

// Body is the whole JSON body, decoded into T; a 400 error when the body is empty or is not
// the JSON T expects.
func Body[T any](req *Request) (T, error) {
	var v T
	if len(req.body) == 0 {
		return v, badRequest("the request body is empty; send a JSON body (e.g. invoke -p '{...}')")
	}
	if err := json.Unmarshal(req.body, &v); err != nil {
		var zero T
		return zero, badRequest(
			"the request body does not match what the handler expects: " + jsonError(err))
	}
	return v, nil
}

// -------------------------------------------------------------------------------------------
// The context.

// Context is what the platform knows about the execution a request belongs to. It is also a
// context.Context, done at the request's deadline: pass it to anything that takes one.
type Context struct {
	id          uint64
	executionID string
	functionID  string
	deadline    time.Time
	env         map[string]string
	srv         *server

	once   sync.Once
	std    context.Context
	cancel context.CancelFunc
}

var _ context.Context = (*Context)(nil)

// NewContext makes a context, for unit-testing a handler without the platform.
func NewContext(executionID, functionID string, env map[string]string) *Context {
	if env == nil {
		env = map[string]string{}
	}
	return &Context{executionID: executionID, functionID: functionID, env: env}
}

// ExecutionID is the execution's id (a ULID), as `dodil ignite execution get` shows it.
func (c *Context) ExecutionID() string { return c.executionID }

// FunctionID is the function being run, "<org>/<name>".
func (c *Context) FunctionID() string { return c.functionID }

// Env is the app's environment variables, as set for the version being run (they are in the
// process environment too: os.Getenv sees them). Shared: do not modify it.
func (c *Context) Env() map[string]string { return c.env }

// Deadline is when the platform gives up on this request; ok is false without a deadline.
func (c *Context) Deadline() (deadline time.Time, ok bool) {
	return c.deadline, !c.deadline.IsZero()
}

// Remaining is the time left before the deadline (0 once it has passed, -1 without one).
func (c *Context) Remaining() time.Duration {
	if c.deadline.IsZero() {
		return -1
	}
	if left := time.Until(c.deadline); left > 0 {
		return left
	}
	return 0
}

func (c *Context) stdContext() context.Context {
	c.once.Do(func() {
		if c.deadline.IsZero() {
			c.std = context.Background()
		} else {
			c.std, c.cancel = context.WithDeadline(context.Background(), c.deadline)
		}
	})
	return c.std
}

// Done is closed at the request's deadline (never without one).
func (c *Context) Done() <-chan struct{} { return c.stdContext().Done() }

// Err is context.DeadlineExceeded once the deadline has passed, else nil.
func (c *Context) Err() error { return c.stdContext().Err() }

// Value is always nil: the context carries no values.
func (c *Context) Value(key any) any { return nil }

// ended is the context a request's Context stands for once the request has been answered.
var ended = func() context.Context {
	c, cancel := context.WithCancel(context.Background())
	cancel()
	return c
}()

// end releases the deadline's timer, if Done or Err started one; from now on the context is
// done.
func (c *Context) end() {
	c.once.Do(func() { c.std = ended })
	if c.cancel != nil {
		c.cancel()
	}
}

// Log logs a line attributed to this execution alone, even when the instance serves several
// requests at once. (What a handler prints to stdout or stderr is logged too.)
func (c *Context) Log(line string) {
	if c.srv == nil {
		fmt.Fprintln(os.Stderr, line)
		return
	}
	c.srv.log(c.id, line)
}

// Logf is Log with a fmt format.
func (c *Context) Logf(format string, args ...any) { c.Log(fmt.Sprintf(format, args...)) }

// -------------------------------------------------------------------------------------------
// Responses.

// Response is an HTTP response of the handler's choosing.
type Response struct {
	// Status is the HTTP status: 0 means 200; outside 100 to 999 the answer is a 500.
	Status int
	// Headers, names lowercase.
	Headers [][2]string
	Body    []byte
}

// WithHeader sets a header (replacing any of the same name) and returns the response.
func (r *Response) WithHeader(name, value string) *Response {
	name = strings.ToLower(name)
	kept := r.Headers[:0]
	for _, h := range r.Headers {
		if h[0] != name {
			kept = append(kept, h)
		}
	}
	r.Headers = append(kept, [2]string{name, value})
	return r
}

const (
	textType   = "text/plain; charset=utf-8"
	jsonType   = "application/json"
	binaryType = "application/octet-stream"
)

// Text is 200 with a UTF-8 text body.
func Text(s string) *Response {
	return &Response{Status: 200, Headers: [][2]string{{"content-type", textType}}, Body: []byte(s)}
}

// Bytes is 200 with these bytes, as application/octet-stream.
func Bytes(b []byte) *Response {
	return &Response{Status: 200, Headers: [][2]string{{"content-type", binaryType}}, Body: b}
}

// JSON is 200 with v encoded as JSON (what returning v itself does), as a *Response whose
// status and headers can then be changed.
func JSON(v any) (*Response, error) {
	body, err := appendJSON(nil, v, 0)
	if err != nil {
		return nil, err
	}
	return &Response{Status: 200, Headers: [][2]string{{"content-type", jsonType}}, Body: body}, nil
}

// Respond is a response with this status, headers (names are lowercased; sent in name order)
// and body.
func Respond(status int, headers map[string]string, body []byte) *Response {
	r := &Response{Status: status, Body: body}
	if len(headers) > 0 {
		r.Headers = make([][2]string, 0, len(headers))
		for k, v := range headers {
			r.Headers = append(r.Headers, [2]string{strings.ToLower(k), v})
		}
		sortPairs(r.Headers)
	}
	return r
}

func sortPairs(p [][2]string) {
	// Insertion sort: a handful of headers.
	for i := 1; i < len(p); i++ {
		for j := i; j > 0 && p[j][0] < p[j-1][0]; j-- {
			p[j], p[j-1] = p[j-1], p[j]
		}
	}
}

// encodeJSON is json.Marshal without HTML escaping (as serde_json encodes).
func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("the handler's response could not be encoded as JSON: %s", jsonError(err))
	}
	b := buf.Bytes()
	return b[:len(b)-1], nil
}

// toResponse turns what a handler returned into a response.
func toResponse(v any) (*Response, error) {
	switch r := v.(type) {
	case nil:
		return &Response{Status: 204}, nil
	case *Response:
		if r == nil {
			return &Response{Status: 204}, nil
		}
		return r, nil
	case Response:
		return &r, nil
	case string:
		return Text(r), nil
	case json.RawMessage:
		return &Response{Status: 200, Headers: [][2]string{{"content-type", jsonType}}, Body: r}, nil
	case []byte:
		return Bytes(r), nil
	}
	body, err := appendJSON(make([]byte, 0, 256), v, 0)
	if err != nil {
		return nil, err
	}
	return &Response{Status: 200, Headers: jsonHeaders, Body: body}, nil
}

// jsonHeaders are the headers of a JSON answer (shared: only read).
var jsonHeaders = [][2]string{{"content-type", jsonType}}
