package builtin

import (
	"github.com/stepflow-go/stepflow/pkg/plugin/pluginapi"
	"github.com/stepflow-go/stepflow/pkg/value"
)

// Component metadata: descriptions as upstream, and JSON Schemas in the
// shape schemars generates for upstream's input and output types (title,
// description, properties, required, $defs).

const schemaDialect = "https://json-schema.org/draft/2020-12/schema"

// Shared definitions.
const (
	defValue       = `"Value":{"description":"Any JSON value (object, array, string, number, boolean, or null)"}`
	defChatMessage = `"ChatMessage":{"description":"Chat message format","type":"object","properties":{` +
		`"role":{"description":"The role of the message sender (system, user, assistant)","$ref":"#/$defs/ChatMessageRole"},` +
		`"content":{"description":"The content of the message","type":"string"}},"required":["role","content"]},` +
		`"ChatMessageRole":{"type":"string","enum":["system","user","assistant"]}`
	defFlow       = `"Flow":{"description":"A workflow: {name?, description?, schemas?, steps: [{id, component, input?, onError?, mustExecute?}], output?}","type":"object"}`
	defFlowResult = `"FlowResult":{"title":"FlowResult","description":"The result of a flow or step.","oneOf":[` +
		`{"type":"object","properties":{"outcome":{"const":"success"},"result":{"$ref":"#/$defs/Value"}},"required":["outcome","result"]},` +
		`{"type":"object","properties":{"outcome":{"const":"failed"},"error":{"$ref":"#/$defs/FlowError"}},"required":["outcome","error"]}]},` +
		`"FlowError":{"description":"An error reported from within a flow or step.","type":"object","properties":{` +
		`"code":{"type":"integer","format":"int64"},"message":{"type":"string"},"data":{"$ref":"#/$defs/Value"}},"required":["code","message"]}`
)

func schema(title, body string) value.Value {
	return value.MustParse(`{"$schema":"` + schemaDialect + `","title":"` + title + `",` + body + `}`)
}

func infos() map[string]pluginapi.ComponentInfo {
	info := func(name, desc string, in, out value.Value) pluginapi.ComponentInfo {
		return pluginapi.ComponentInfo{Component: name, Description: desc, InputSchema: in, OutputSchema: out}
	}
	return map[string]pluginapi.ComponentInfo{
		OpenAI: info(OpenAI, "Send messages to OpenAI's chat completion API and get a response",
			schema("OpenAIInput", `"description":"Input for the OpenAI component","type":"object","properties":{`+
				`"messages":{"description":"The messages to send to the API","type":"array","items":{"$ref":"#/$defs/ChatMessage"}},`+
				`"model":{"description":"The model to use (optional, default gpt-3.5-turbo)","type":["string","null"]},`+
				`"max_tokens":{"description":"Max tokens to generate (optional)","type":["integer","null"],"format":"uint16","minimum":0,"maximum":65535},`+
				`"temperature":{"description":"Temperature setting (optional)","type":["number","null"],"format":"float"},`+
				`"api_key":{"description":"API key override (optional - uses environment variable if not provided)","type":["string","null"]}},`+
				`"required":["messages"],"$defs":{`+defChatMessage+`}`),
			schema("OpenAIOutput", `"description":"Output from the OpenAI component","type":"object","properties":{`+
				`"response":{"description":"The generated response text","type":"string"}},"required":["response"]`)),
		CreateMessages: info(CreateMessages, "Create a chat message list from system instructions and user prompt",
			schema("CreateMessagesInput", `"type":"object","properties":{`+
				`"system_instructions":{"description":"The system instructions to include in the message list.","type":["string","null"]},`+
				`"user_prompt":{"description":"The user prompt to include in the message list.","type":"string"}},"required":["user_prompt"]`),
			schema("CreateMessagesOutput", `"type":"object","properties":{`+
				`"messages":{"type":"array","items":{"$ref":"#/$defs/ChatMessage"}}},"required":["messages"],"$defs":{`+defChatMessage+`}`)),
		Eval: info(Eval, "Execute a nested workflow with given input and return the result",
			schema("EvalInput", `"description":"Input for the eval component","type":"object","properties":{`+
				`"flow_id":{"description":"The ID of the workflow to execute (blob ID)","$ref":"#/$defs/BlobId"},`+
				`"input":{"description":"The input to pass to the workflow","$ref":"#/$defs/Value"}},"required":["flow_id","input"],"$defs":{`+
				`"BlobId":{"description":"A content-addressed blob id: the lowercase hex SHA-256 of the blob's compact JSON","type":"string","pattern":"^[0-9a-f]{64}$"},`+defValue+`}`),
			schema("EvalOutput", `"description":"Output from the eval component\n\nThe output is simply the result of the nested workflow execution","type":"object","properties":{`+
				`"result":{"description":"The result from executing the nested workflow","$ref":"#/$defs/FlowResult"},`+
				`"run_id":{"description":"The run ID of the calling run","type":"string"}},"required":["result","run_id"],"$defs":{`+defFlowResult+`,`+defValue+`}`)),
		Map: info(Map, "Apply a workflow to each item in a list and collect the results",
			schema("MapInput", `"description":"Input for the map component","type":"object","properties":{`+
				`"workflow":{"description":"The workflow to apply to each item","$ref":"#/$defs/Flow"},`+
				`"items":{"description":"The list of items to process","type":"array","items":{"$ref":"#/$defs/Value"}},`+
				`"max_concurrency":{"description":"Maximum number of concurrent executions (optional, defaults to number of items)","type":["integer","null"],"format":"uint","minimum":0}},`+
				`"required":["workflow","items"],"$defs":{`+defFlow+`,`+defValue+`}`),
			schema("MapOutput", `"description":"Output from the map component","type":"object","properties":{`+
				`"results":{"description":"The results from processing each item","type":"array","items":{"$ref":"#/$defs/FlowResult"}},`+
				`"successful":{"description":"Number of successful items","type":"integer","format":"uint32","minimum":0},`+
				`"failed":{"description":"Number of failed items","type":"integer","format":"uint32","minimum":0}},`+
				`"required":["results","successful","failed"],"$defs":{`+defFlowResult+`,`+defValue+`}`)),
		Iterate: info(Iterate, "Iteratively apply a workflow until it returns a result instead of next",
			schema("IterateInput", `"description":"Input for the iterate component","type":"object","properties":{`+
				`"flow":{"description":"The workflow to iterate. Must return either {\"result\": value} or {\"next\": value}","$ref":"#/$defs/Flow"},`+
				`"initial_input":{"description":"The initial input to pass to the workflow","$ref":"#/$defs/Value"},`+
				`"max_iterations":{"description":"Maximum number of iterations to prevent infinite loops (default: 1000)","type":"integer","format":"uint32","minimum":0,"default":1000}},`+
				`"required":["flow","initial_input"],"$defs":{`+defFlow+`,`+defValue+`}`),
			schema("IterateOutput", `"description":"Output from the iterate component","type":"object","properties":{`+
				`"result":{"description":"The final result value","$ref":"#/$defs/Value"},`+
				`"iterations":{"description":"The number of iterations performed","type":"integer","format":"uint32","minimum":0},`+
				`"terminated":{"description":"Whether the iteration was terminated by max_iterations","type":"boolean"}},`+
				`"required":["result","iterations","terminated"],"$defs":{`+defValue+`}`)),
		PutBlob: info(PutBlob, "Store JSON data as a blob and return its content-addressable ID",
			schema("PutBlobInput", `"description":"Input for the put_blob component","type":"object","properties":{`+
				`"data":{"description":"The JSON data to store as a blob"},`+
				`"blob_type":{"description":"The type of blob to store","$ref":"#/$defs/BlobType"}},"required":["data","blob_type"],"$defs":{`+
				`"BlobType":{"description":"The kind of a blob: plain data, or a flow (stored in canonical form)","type":"string","enum":["flow","data"]}}`),
			schema("PutBlobOutput", `"description":"Output from the put_blob component","type":"object","properties":{`+
				`"blob_id":{"description":"The blob ID for the stored data","type":"string"}},"required":["blob_id"]`)),
		GetBlob: info(GetBlob, "Retrieve JSON data from a blob using its ID",
			schema("GetBlobInput", `"description":"Input for the get_blob component","type":"object","properties":{`+
				`"blob_id":{"description":"The blob ID to retrieve","type":"string"}},"required":["blob_id"]`),
			schema("GetBlobOutput", `"description":"Output from the get_blob component","type":"object","properties":{`+
				`"data":{"description":"The JSON data stored in the blob"}},"required":["data"]`)),
		LoadFile: info(LoadFile, "Load and parse a file (JSON, YAML, or text) from the filesystem",
			schema("LoadFileInput", `"type":"object","properties":{`+
				`"path":{"description":"Path to the file to load","type":"string"},`+
				`"format":{"description":"Format of the file (json, yaml, text). If not specified, inferred from extension","anyOf":[{"$ref":"#/$defs/FileFormat"},{"type":"null"}]}},`+
				`"required":["path"],"$defs":{"FileFormat":{"type":"string","enum":["json","yaml","text"]}}`),
			schema("LoadFileOutput", `"type":"object","properties":{`+
				`"data":{"description":"The loaded data (parsed JSON/YAML or raw text)"},`+
				`"metadata":{"description":"Metadata about the loaded file","$ref":"#/$defs/FileMetadata"}},"required":["data","metadata"],"$defs":{`+
				`"FileFormat":{"type":"string","enum":["json","yaml","text"]},`+
				`"FileMetadata":{"type":"object","properties":{`+
				`"resolved_path":{"description":"The resolved path","type":"string"},`+
				`"size_bytes":{"description":"File size in bytes","type":"integer","format":"uint64","minimum":0},`+
				`"format":{"description":"Detected or specified format","$ref":"#/$defs/FileFormat"}},"required":["resolved_path","size_bytes","format"]}}`)),
	}
}
