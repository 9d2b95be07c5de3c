// go_llm_client: the Go end-to-end client for tokentap. Standard library only.
//
// It calls the mock provider (tests/src/mock_provider.rs) the way Go programs call LLM APIs:
// net/http over crypto/tls with keep-alive, from several goroutines at once, OpenAI chat
// completions (JSON, gzip-encoded by the mock) and streamed (SSE with usage), and Anthropic
// Messages streams. It prints a JSON report on stdout: for every call what the client itself
// parsed (tokens, models, status, time to first content chunk, HTTP protocol), which is the
// ground truth the agent must equal.
//
// Calls are made at the bottom of a deep recursion, so goroutine stacks are grown (copied)
// around the probed calls. "raw" calls speak HTTP/1.1 by hand on a *tls.Conn and read into a
// buffer on the goroutine's stack while another goroutine forces garbage collections: the
// stack is shrunk (moved) while Read is blocked, and the report counts how often the buffer's
// address changed across a Read.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

type call struct {
	Scenario      string  `json:"scenario"`
	Provider      string  `json:"provider"`
	ServerAddress string  `json:"server_address"`
	RequestModel  string  `json:"request_model"`
	ResponseModel string  `json:"response_model"`
	Streaming     bool    `json:"streaming"`
	Status        int     `json:"status"`
	Proto         string  `json:"proto"`
	ALPN          string  `json:"alpn"`
	Input         int64   `json:"input"`
	Output        int64   `json:"output"`
	TTFCs         float64 `json:"ttfc_s"`
	Durations     float64 `json:"duration_s"`
	Error         string  `json:"error,omitempty"`
}

type report struct {
	Pid              int    `json:"pid"`
	GoVersion        string `json:"go_version"`
	Calls            []call `json:"calls"`
	StackBufferMoves int64  `json:"stack_buffer_moves"`
	RawReads         int64  `json:"raw_reads"`
}

var (
	port     = flag.Int("port", 0, "mock provider port on 127.0.0.1")
	caFile   = flag.String("cafile", "", "PEM of the CA that signed the mock's certificate")
	workers  = flag.Int("goroutines", 4, "concurrent goroutines sharing one keep-alive client")
	rounds   = flag.Int("rounds", 3, "rounds per goroutine (each: JSON, OpenAI stream, Anthropic stream)")
	rawCalls = flag.Int("raw", 2, "hand-written HTTP/1.1 calls reading into a stack buffer")
	depth    = flag.Int("depth", 2000, "recursion depth (1 KiB frames) before each call")
	wait     = flag.Bool("wait-stdin", false, "read a line from stdin before the first call")
	hold     = flag.Bool("hold-stdin", false, "after the report, keep running with one loopback TCP connection open until a line on stdin")
)

var (
	mu     sync.Mutex
	calls  []call
	moves  int64
	nreads int64
)

func record(c call) {
	mu.Lock()
	calls = append(calls, c)
	mu.Unlock()
}

// deep calls f at the bottom of n frames of 1 KiB each, growing the goroutine's stack.
//
//go:noinline
func deep(n int, f func()) byte {
	var pad [1024]byte
	pad[n%1024] = byte(n)
	if n <= 0 {
		f()
		return pad[0]
	}
	return deep(n-1, f) + pad[n%1024]
}

func main() {
	flag.Parse()
	pem, err := os.ReadFile(*caFile)
	if err != nil {
		fail("reading --cafile: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fail("no certificate in %s", *caFile)
	}
	tlsConfig := &tls.Config{RootCAs: pool}
	mockAddr := "127.0.0.1:" + strconv.Itoa(*port)
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	transport := &http.Transport{
		// Every provider host is the mock.
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, mockAddr)
		},
		TLSClientConfig:     tlsConfig,
		ForceAttemptHTTP2:   true, // as http.DefaultTransport: h2 if the server offers it
		MaxIdleConnsPerHost: *workers,
	}
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	stdin := bufio.NewReader(os.Stdin)
	if *wait {
		if _, err := stdin.ReadString('\n'); err != nil {
			fail("waiting for the go-ahead on stdin: %v", err)
		}
	}

	stopGC := make(chan struct{})
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		for {
			select {
			case <-stopGC:
				return
			case <-time.After(5 * time.Millisecond):
				runtime.GC()
			}
		}
	}()

	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for r := 0; r < *rounds; r++ {
				d := *depth + 97*w + 13*r
				deep(d, func() { record(openAIChat(client, false)) })
				deep(d, func() { record(openAIChat(client, true)) })
				deep(d, func() { record(anthropicStream(client)) })
			}
		}(w)
	}
	for i := 0; i < *rawCalls; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// Grow the stack, return, then read on a stack a quarter used: GC shrinks it.
			deep(*depth*2, func() {})
			record(rawChat(tlsConfig, mockAddr, i))
		}(i)
	}
	wg.Wait()
	close(stopGC)
	<-gcDone

	out := report{
		Pid:              os.Getpid(),
		GoVersion:        runtime.Version(),
		Calls:            calls,
		StackBufferMoves: atomic.LoadInt64(&moves),
		RawReads:         atomic.LoadInt64(&nreads),
	}
	if *hold {
		// A connection to itself: the process stays one with an established TCP connection,
		// which is what `tokentap status` lists, whatever the mock does with idle ones.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fail("listening on loopback: %v", err)
		}
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			fail("connecting to itself: %v", err)
		}
		peer, err := ln.Accept()
		if err != nil {
			fail("accepting its own connection: %v", err)
		}
		defer conn.Close()
		defer peer.Close()
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fail("writing the report: %v", err)
	}
	if *hold {
		if _, err := stdin.ReadString('\n'); err != nil {
			fail("waiting for the release on stdin: %v", err)
		}
	}
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go_llm_client: "+format+"\n", args...)
	os.Exit(1)
}

const openAIModel = "gpt-4o-mini-go-chunks4"
const openAIStreamModel = "gpt-4o-mini-go-stream-chunks6-delay60-gap10"
const anthropicModel = "claude-sonnet-4-5-go-chunks5-delay40-gap10-cached7"
const rawModel = "gpt-4o-mini-go-raw-chunks3-delay200"

func openAIChat(client *http.Client, stream bool) call {
	model := openAIModel
	if stream {
		model = openAIStreamModel
	}
	c := call{Scenario: "openai.chat", Provider: "openai", ServerAddress: "api.openai.com",
		RequestModel: model, Streaming: stream}
	if stream {
		c.Scenario = "openai.chat.stream"
	}
	body := map[string]interface{}{
		"model":    model,
		"messages": []map[string]string{{"role": "user", "content": "Say hello to the Go client, please."}},
	}
	if stream {
		body["stream"] = true
		body["stream_options"] = map[string]bool{"include_usage": true}
	}
	payload, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", "https://api.openai.com/v1/chat/completions", bytes.NewReader(payload))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-tokentap-test-not-a-real-key")
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		c.Error = err.Error()
		return c
	}
	defer resp.Body.Close()
	c.Status, c.Proto = resp.StatusCode, resp.Proto
	if resp.TLS != nil {
		c.ALPN = resp.TLS.NegotiatedProtocol
	}
	type usage struct {
		Prompt     int64 `json:"prompt_tokens"`
		Completion int64 `json:"completion_tokens"`
	}
	type chunk struct {
		Model   string `json:"model"`
		Choices []struct {
			Delta struct {
				Content string `json:"content"`
			} `json:"delta"`
		} `json:"choices"`
		Usage *usage `json:"usage"`
	}
	if !stream {
		var r chunk
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			c.Error = err.Error()
			return c
		}
		c.ResponseModel = r.Model
		if r.Usage != nil {
			c.Input, c.Output = r.Usage.Prompt, r.Usage.Completion
		}
		c.Durations = time.Since(start).Seconds()
		return c
	}
	err = sse(resp.Body, func(_, data string) {
		if data == "[DONE]" {
			return
		}
		var ch chunk
		if json.Unmarshal([]byte(data), &ch) != nil {
			c.Error = "bad chunk: " + data
			return
		}
		c.ResponseModel = ch.Model
		if len(ch.Choices) > 0 && ch.Choices[0].Delta.Content != "" && c.TTFCs == 0 {
			c.TTFCs = time.Since(start).Seconds()
		}
		if ch.Usage != nil {
			c.Input, c.Output = ch.Usage.Prompt, ch.Usage.Completion
		}
	})
	if err != nil {
		c.Error = err.Error()
	}
	c.Durations = time.Since(start).Seconds()
	return c
}

func anthropicStream(client *http.Client) call {
	c := call{Scenario: "anthropic.messages.stream", Provider: "anthropic",
		ServerAddress: "api.anthropic.com", RequestModel: anthropicModel, Streaming: true}
	payload, _ := json.Marshal(map[string]interface{}{
		"model":      anthropicModel,
		"max_tokens": 64,
		"stream":     true,
		"messages":   []map[string]string{{"role": "user", "content": "A haiku about goroutines."}},
	})
	req, _ := http.NewRequest("POST", "https://api.anthropic.com/v1/messages", bytes.NewReader(payload))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("x-api-key", "sk-tokentap-test-not-a-real-key")
	req.Header.Set("anthropic-version", "2023-06-01")
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		c.Error = err.Error()
		return c
	}
	defer resp.Body.Close()
	c.Status, c.Proto = resp.StatusCode, resp.Proto
	if resp.TLS != nil {
		c.ALPN = resp.TLS.NegotiatedProtocol
	}
	type usage struct {
		Input       int64 `json:"input_tokens"`
		Output      int64 `json:"output_tokens"`
		CacheRead   int64 `json:"cache_read_input_tokens"`
		CacheCreate int64 `json:"cache_creation_input_tokens"`
	}
	type event struct {
		Type    string `json:"type"`
		Message struct {
			Model string `json:"model"`
			Usage usage  `json:"usage"`
		} `json:"message"`
		Delta struct {
			Text string `json:"text"`
		} `json:"delta"`
		Usage *usage `json:"usage"`
	}
	err = sse(resp.Body, func(_, data string) {
		var ev event
		if json.Unmarshal([]byte(data), &ev) != nil {
			c.Error = "bad event: " + data
			return
		}
		switch ev.Type {
		case "message_start":
			u := ev.Message.Usage
			c.ResponseModel = ev.Message.Model
			c.Input = u.Input + u.CacheRead + u.CacheCreate
			c.Output = u.Output
		case "content_block_delta":
			if ev.Delta.Text != "" && c.TTFCs == 0 {
				c.TTFCs = time.Since(start).Seconds()
			}
		case "message_delta":
			if ev.Usage != nil {
				c.Output = ev.Usage.Output
			}
		}
	})
	if err != nil {
		c.Error = err.Error()
	}
	c.Durations = time.Since(start).Seconds()
	return c
}

// sse calls f with each event's name and data.
func sse(r io.Reader, f func(event, data string)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	var name string
	var data []string
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case line == "":
			if len(data) > 0 {
				f(name, strings.Join(data, "\n"))
			}
			name, data = "", nil
		case strings.HasPrefix(line, "event:"):
			name = strings.TrimSpace(line[6:])
		case strings.HasPrefix(line, "data:"):
			data = append(data, strings.TrimSpace(line[5:]))
		}
	}
	if len(data) > 0 {
		f(name, strings.Join(data, "\n"))
	}
	return sc.Err()
}

// rawChat sends one non-streamed chat completion by hand on a *tls.Conn and reads the answer
// into a buffer on this goroutine's stack.
func rawChat(config *tls.Config, addr string, i int) call {
	c := call{Scenario: "openai.chat.raw", Provider: "openai", ServerAddress: "api.openai.com",
		RequestModel: rawModel}
	cfg := config.Clone()
	cfg.ServerName = "api.openai.com"
	cfg.NextProtos = []string{"http/1.1"}
	start := time.Now()
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		c.Error = err.Error()
		return c
	}
	defer conn.Close()
	c.ALPN = conn.ConnectionState().NegotiatedProtocol
	payload := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"raw call %d from a stack buffer"}]}`, rawModel, i)
	head := "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer sk-tokentap-test-not-a-real-key\r\n" +
		"Content-Type: application/json\r\nAccept-Encoding: identity\r\nContent-Length: " + strconv.Itoa(len(payload)) + "\r\n\r\n"
	if _, err := conn.Write([]byte(head + payload)); err != nil {
		c.Error = err.Error()
		return c
	}
	var got []byte
	var buf [512]byte
	for {
		before := uintptr(unsafe.Pointer(&buf[0]))
		n, err := conn.Read(buf[:])
		atomic.AddInt64(&nreads, 1)
		if uintptr(unsafe.Pointer(&buf[0])) != before {
			atomic.AddInt64(&moves, 1)
		}
		got = append(got, buf[:n]...)
		if complete(got) {
			break
		}
		if err != nil {
			c.Error = err.Error()
			return c
		}
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
	if err != nil {
		c.Error = err.Error()
		return c
	}
	defer resp.Body.Close()
	c.Status, c.Proto = resp.StatusCode, resp.Proto
	var r struct {
		Model string `json:"model"`
		Usage struct {
			Prompt     int64 `json:"prompt_tokens"`
			Completion int64 `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		c.Error = err.Error()
		return c
	}
	c.ResponseModel, c.Input, c.Output = r.Model, r.Usage.Prompt, r.Usage.Completion
	c.Durations = time.Since(start).Seconds()
	return c
}

// complete: a whole response with a Content-Length body is in b.
func complete(b []byte) bool {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		return false
	}
	for _, line := range strings.Split(string(b[:end]), "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "content-length") {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			return err == nil && len(b) >= end+4+n
		}
	}
	return false
}
