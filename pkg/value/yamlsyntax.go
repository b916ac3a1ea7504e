package value

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	yamlv4 "go.yaml.in/yaml/v4"
)

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): `)

// YAMLSyntaxError turns the error yaml.v3 gave for data into a
// *YAMLError with the line and column of the problem; its message starts
// with "invalid YAML: ".
//
// yaml.v3 reports a syntax error with a line only, and for parser errors
// (an unclosed bracket, a bad indentation) the 0-based line of the
// construct being parsed, one less than the line a user sees. So data is
// parsed again with go.yaml.in/yaml/v4, the maintained successor of the
// same parser, whose errors carry the 1-based line and column of the
// problem and of its context. Should v4 accept what v3 refused, the
// line of v3's message is kept. Only the error path pays for this.
func YAMLSyntaxError(data []byte, err error) *YAMLError {
	var n yamlv4.Node
	var le *yamlv4.LoadError
	if err4 := yamlv4.Unmarshal(data, &n); errors.As(err4, &le) && le.Mark.Line > 0 {
		msg := le.Message
		if le.ContextMsg != "" && le.ContextMark != le.Mark && le.ContextMark.Line > 0 {
			msg += fmt.Sprintf(" (%s that starts at line %d, column %d)", le.ContextMsg, le.ContextMark.Line, le.ContextMark.Column)
		}
		return &YAMLError{Pos: Pos{le.Mark.Line, le.Mark.Column}, Msg: "invalid YAML: " + msg}
	}
	msg := err.Error()
	var pos Pos
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		pos.Line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	return &YAMLError{Pos: pos, Msg: "invalid YAML: " + msg}
}
