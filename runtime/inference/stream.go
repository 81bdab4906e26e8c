package inference

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/openshell/openshell/policyhook/policy"
)

// relayStream relays a server-sent event stream event by event, each as
// soon as it is whole: each is read for tokens, scrubbed of the key, and
// flushed. A stream that ends before its API's last event (the model
// server hung up, went quiet for the timeout, sent an event or a stream
// over the bounds) ends with an error event in the API's shape, so the
// client sees an error rather than a short answer. When the sandbox
// hangs up, the stream is still read to its end (within the same
// bounds), so that its tokens are counted.
func (c *call) relayStream(w http.ResponseWriter, body io.Reader) {
	rc := http.NewResponseController(w)
	w.Header().Del("Content-Length")
	w.WriteHeader(c.ev.Status)
	_ = rc.Flush()
	br := bufio.NewReaderSize(body, 64<<10)
	var total int64
	done, clientGone := false, false
	var why error
	for !done {
		ev, err := readEvent(br)
		total += int64(len(ev))
		if len(ev) > 0 {
			var forward bool
			done, forward = c.seeEvent(ev)
			if forward && !clientGone {
				if _, werr := w.Write(c.scrubBytes(ev)); werr != nil || rc.Flush() != nil {
					clientGone = true
				}
			}
		}
		if total > MaxStreamBytes && !done {
			err = fmt.Errorf("the stream passed %d bytes", MaxStreamBytes)
		}
		if err != nil {
			if !done {
				why = err
			}
			break
		}
	}
	c.ev.BytesDown = total
	switch {
	case why != nil:
		if errors.Is(why, io.EOF) {
			why = errors.New("the model server ended the stream before its last event")
		}
		c.ev.Reason = "stream truncated: " + c.scrub(why.Error())
		if !clientGone {
			_, _ = w.Write(c.truncationEvent(c.ev.Reason))
			_ = rc.Flush()
		}
	case clientGone:
		c.ev.Reason = "the sandbox hung up during the stream; it was read to its end and counted"
	}
}

// readEvent reads one event: lines up to and including the blank line
// that ends it. At the end of the stream it returns what it read with
// io.EOF (an event cut short is never relayed: the spec drops it too).
func readEvent(br *bufio.Reader) ([]byte, error) {
	var ev []byte
	for {
		line, err := br.ReadSlice('\n')
		if len(ev)+len(line) > MaxEventBytes {
			return nil, fmt.Errorf("an event of more than %d bytes", MaxEventBytes)
		}
		ev = append(ev, line...)
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err != nil:
			if errors.Is(err, io.EOF) && len(bytes.TrimSpace(ev)) == 0 {
				return nil, io.EOF
			}
			if errors.Is(err, io.EOF) {
				return nil, errors.New("the model server ended the stream in the middle of an event")
			}
			return nil, err
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			if len(bytes.TrimSpace(ev)) == 0 {
				ev = ev[:0] // stray blank lines between events
				continue
			}
			return ev, nil
		}
	}
}

// seeEvent reads one event for tokens and its API's end; forward is
// false for the usage chunk the router asked for on a client's behalf.
func (c *call) seeEvent(ev []byte) (done, forward bool) {
	var data []byte
	for _, line := range bytes.Split(ev, []byte("\n")) {
		line = bytes.TrimRight(line, "\r")
		if rest, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			if len(data) > 0 {
				data = append(data, '\n')
			}
			data = append(data, bytes.TrimPrefix(rest, []byte(" "))...)
		}
	}
	if string(data) == "[DONE]" {
		return true, true
	}
	var d usageDoc
	if len(data) == 0 || json.Unmarshal(data, &d) != nil {
		return false, true
	}
	c.tally.see(&d, c.rt.api)
	switch d.Type {
	case "message_stop", "error", "response.completed", "response.failed", "response.incomplete":
		done = true
	}
	if c.hideUse && d.Usage != nil && d.Choices != nil && len(*d.Choices) == 0 {
		return done, false
	}
	return done, true
}

// truncationEvent is the error event a cut stream ends with.
func (c *call) truncationEvent(msg string) []byte {
	msg = "openshell: " + msg
	var v any
	var name string
	switch {
	case c.shape == APIAnthropic:
		name = "error"
		v = map[string]any{"type": "error", "error": map[string]string{"type": "api_error", "message": msg}}
	case c.rt.api == policy.APIResponses:
		name = "error"
		v = map[string]any{"type": "error", "code": "stream_truncated", "message": msg, "param": nil}
	default:
		v = map[string]any{"error": map[string]any{"message": msg, "type": "server_error", "code": "stream_truncated", "param": nil}}
	}
	data, _ := json.Marshal(v)
	var b bytes.Buffer
	if name != "" {
		fmt.Fprintf(&b, "event: %s\n", name)
	}
	fmt.Fprintf(&b, "data: %s\n\n", data)
	return b.Bytes()
}
