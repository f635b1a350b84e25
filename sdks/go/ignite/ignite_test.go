package ignite

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func status(t *testing.T, err error) int {
	t.Helper()
	var se *StatusError
	if !errors.As(err, &se) {
		t.Fatalf("%v is not a StatusError", err)
	}
	return se.Status
}

func TestField(t *testing.T) {
	req := NewRequest("POST", "/", []byte(`{"message": "hi there", "n": 3, "none": null, "list": [1, 2]}`))
	if m, err := Field[string](req, "message"); err != nil || m != "hi there" {
		t.Fatal(m, err)
	}
	if n, err := Field[int](req, "n"); err != nil || n != 3 {
		t.Fatal(n, err)
	}
	if l, err := Field[[]int](req, "list"); err != nil || len(l) != 2 {
		t.Fatal(l, err)
	}
	if p, err := Field[*string](req, "none"); err != nil || p != nil {
		t.Fatal(p, err)
	}
	_, err := Field[string](req, "nope")
	if err == nil || err.Error() != "missing field `nope` in the request body" || status(t, err) != 400 {
		t.Fatal(err)
	}
	_, err = Field[string](req, "n")
	if err == nil || !strings.HasPrefix(err.Error(), "invalid field `n` in the request body: ") || status(t, err) != 400 {
		t.Fatal(err)
	}
	_, err = Field[string](req, "none")
	if err == nil || err.Error() != "invalid field `none` in the request body: null, expected string" {
		t.Fatal(err)
	}
	if v := FieldOr(req, "nope", "dflt"); v != "dflt" {
		t.Fatal(v)
	}
	if v := FieldOr(req, "message", "dflt"); v != "hi there" {
		t.Fatal(v)
	}
	// An empty body has no fields.
	_, err = Field[string](NewRequest("POST", "/", nil), "message")
	if err == nil || err.Error() != "missing field `message` in the request body" {
		t.Fatal(err)
	}
	_, err = Field[string](NewRequest("POST", "/", []byte(`[1]`)), "message")
	if err == nil || err.Error() != "missing field `message`: the request body is JSON an array , not an object" {
		t.Fatal(err)
	}
	_, err = Field[string](NewRequest("POST", "/", []byte(`null`)), "message")
	if err == nil || err.Error() != "missing field `message`: the request body is JSON null , not an object" {
		t.Fatal(err)
	}
	_, err = Field[string](NewRequest("POST", "/", []byte(`hello`)), "message")
	if err == nil || !strings.HasPrefix(err.Error(), "missing field `message`: the request body is not JSON (") {
		t.Fatal(err)
	}
}

func TestBody(t *testing.T) {
	type In struct {
		Name string `json:"name"`
	}
	v, err := Body[In](NewRequest("POST", "/", []byte(`{"name": "ada"}`)))
	if err != nil || v.Name != "ada" {
		t.Fatal(v, err)
	}
	_, err = Body[In](NewRequest("POST", "/", nil))
	if err == nil || err.Error() != "the request body is empty; send a JSON body (e.g. invoke -p '{...}')" {
		t.Fatal(err)
	}
	_, err = Body[In](NewRequest("POST", "/", []byte(`{"name": 1}`)))
	if err == nil || !strings.HasPrefix(err.Error(), "the request body does not match what the handler expects: ") || status(t, err) != 400 {
		t.Fatal(err)
	}
}

func TestRequestAccessors(t *testing.T) {
	req := NewRequest("GET", "/a", []byte("raw")).WithQuery("x=1").WithHeader("X-Thing", "v")
	if req.Method() != "GET" || req.Path() != "/a" || req.Query() != "x=1" || string(req.Raw()) != "raw" {
		t.Fatal(req)
	}
	if req.Header("x-THING") != "v" || req.Header("nope") != "" || req.Headers()[0][0] != "x-thing" {
		t.Fatal(req.Headers())
	}
}

func TestResponses(t *testing.T) {
	cases := []struct {
		v      any
		status int
		ctype  string
		body   string
	}{
		{map[string]any{"a": "<b>"}, 200, jsonType, `{"a":"<b>"}`},
		{"hi", 200, textType, "hi"},
		{Text("hi"), 200, textType, "hi"},
		{[]byte{1}, 200, binaryType, "\x01"},
		{nil, 204, "", ""},
		{(*Response)(nil), 204, "", ""},
		{Respond(201, map[string]string{"Location": "/x", "B": "1"}, []byte("made")), 201, "", "made"},
		{[]int{1, 2}, 200, jsonType, "[1,2]"},
	}
	for _, c := range cases {
		r, err := toResponse(c.v)
		if err != nil {
			t.Fatal(err)
		}
		ctype := ""
		for _, h := range r.Headers {
			if h[0] == "content-type" {
				ctype = h[1]
			}
		}
		if r.Status != c.status || ctype != c.ctype || string(r.Body) != c.body {
			t.Fatalf("%#v → %+v", c.v, r)
		}
	}
	r := Respond(201, map[string]string{"Location": "/x", "B": "1"}, nil).WithHeader("b", "2")
	if fmt.Sprint(r.Headers) != "[[location /x] [b 2]]" {
		t.Fatal(r.Headers)
	}
	if _, err := toResponse(make(chan int)); err == nil || !strings.HasPrefix(err.Error(), "the handler's response could not be encoded as JSON") {
		t.Fatal(err)
	}
}

func TestErrors(t *testing.T) {
	if statusOf(Error(418, "teapot")) != 418 || statusOf(errors.New("x")) != 500 {
		t.Fatal()
	}
	wrapped := fmt.Errorf("loading: %w", Errorf(404, "no user %d", 7))
	if statusOf(wrapped) != 404 || wrapped.Error() != "loading: no user 7" {
		t.Fatal(wrapped)
	}
	if statusOf(Error(7, "odd")) != 500 {
		t.Fatal()
	}
}

func TestContext(t *testing.T) {
	ctx := NewContext("01J", "acme/tiny", map[string]string{"A": "1"})
	if ctx.ExecutionID() != "01J" || ctx.FunctionID() != "acme/tiny" || ctx.Env()["A"] != "1" {
		t.Fatal(ctx)
	}
	if _, ok := ctx.Deadline(); ok || ctx.Remaining() != -1 || ctx.Err() != nil {
		t.Fatal("a deadline without one")
	}
	ctx = &Context{deadline: time.Now().Add(20 * time.Millisecond)}
	select {
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("not done at the deadline")
	}
	if ctx.Err() == nil || ctx.Remaining() != 0 {
		t.Fatal(ctx.Err())
	}
	ctx = &Context{}
	ctx.end()
	<-ctx.Done()
}
