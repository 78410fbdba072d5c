-- wrk script: a small non-streaming chat completion POST.
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"Say hi in one word."}],"max_tokens":1}'
