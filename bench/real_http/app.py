# A FastAPI/uvicorn (h11) node for bench/real-http.sh: JSON answers
# (content-length), SSE streams (chunked), a large embeddings answer, and
# uvicorn's keep-alive timeout closing idle connections.
import asyncio, json, time
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

app = FastAPI()

@app.get("/v1/models")
async def models():
    return {"object": "list", "data": [{"id": "tiny", "object": "model", "owned_by": "me", "created": 0}]}

@app.post("/v1/chat/completions")
async def chat(req: Request):
    body = await req.json()
    n = int(body.get("max_tokens") or 16)
    if body.get("stream"):
        async def gen():
            for i in range(n):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "tiny",
                         "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                if i % 10 == 0:
                    await asyncio.sleep(0.001)
            last = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "tiny",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
            yield f"data: {json.dumps(last)}\n\n"
            yield "data: [DONE]\n\n"
        return StreamingResponse(gen(), media_type="text/event-stream")
    text = " ".join(f"t{i}" for i in range(n))
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": "tiny",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}}

@app.post("/v1/embeddings")
async def embeddings(req: Request):
    body = await req.json()
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [{"object": "embedding", "index": i, "embedding": [0.001 * j for j in range(4096)]} for i in range(len(inputs))]
    return {"object": "list", "data": data, "model": "tiny", "usage": {"prompt_tokens": 1, "total_tokens": 1}}
