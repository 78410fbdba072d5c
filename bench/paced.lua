-- wrk script: bench/post.lua's small chat POST, each connection waiting
-- PAUSE_MS milliseconds (whole milliseconds: wrk's timer) between its
-- requests, so the offered load is fixed below saturation (bench/e2e.sh,
-- section 1b).
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"model":"llama-3.1-8b-instruct","messages":[{"role":"user","content":"Say hi in one word."}],"max_tokens":1}'
local pause = tonumber(os.getenv("PAUSE_MS") or "1")
function delay() return pause end
