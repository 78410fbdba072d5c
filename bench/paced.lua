-- wrk script: bench/post.lua's small chat POST (loaded from beside this
-- file), each connection waiting PAUSE_MS milliseconds (whole
-- milliseconds: wrk's timer) between its requests, so the offered load is
-- fixed below saturation (bench/e2e.sh, section 1b).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "post.lua")
local pause = tonumber(os.getenv("PAUSE_MS") or "1")
function delay() return pause end
