-- wrk script: POST realistic ~800-byte Segment track events, each with its own messageId.
-- CDPD_SEED keeps the ids of wrk processes started in the same second apart.
math.randomseed(os.time() + tonumber(os.getenv("CDPD_SEED") or "0"))
-- Set by the caller through the environment: CDPD_PATH (/v1/track or /v1/batch) and
-- CDPD_BATCH (events per request; 1 posts a bare event).
local path = os.getenv("CDPD_PATH") or "/v1/track"
local batch = tonumber(os.getenv("CDPD_BATCH") or "1")
local counter = 0
local prefix = ""

local event = '{"type":"track","event":"Order Completed","userId":"user-%d","anonymousId":"anon-4f1c2d8e-9b7a-4e21-8c3d-5a6b7c8d9e0f","messageId":"bench-%s-%d","timestamp":"2026-11-28T10:00:00.123Z","properties":{"order_id":"50314b8e9bcf000000000000","total":27.5,"revenue":25.0,"shipping":3,"tax":2,"currency":"USD","products":[{"product_id":"507f1f77bcf86cd799439011","sku":"45790-32","name":"Monopoly: 3rd Edition","price":19,"quantity":1,"category":"Games"}]},"context":{"library":{"name":"analytics.js","version":"next-1.84.1"},"page":{"path":"/checkout","url":"https://shop.example.com/checkout","title":"Checkout","referrer":"https://shop.example.com/cart"},"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36","locale":"en-US"},"integrations":{"All":true}}'

local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Basic d2tfYmVuY2g6",  -- wk_bench:
}

function setup(thread)
  thread:set("thread_prefix", string.format("%08x", math.random(0, 0x7fffffff)))
end

function init(args)
  prefix = thread_prefix
end

request = function()
  if batch == 1 then
    counter = counter + 1
    return wrk.format("POST", path, headers, string.format(event, counter % 1000, prefix, counter))
  end
  local items = {}
  for i = 1, batch do
    counter = counter + 1
    items[i] = string.format(event, counter % 1000, prefix, counter)
  end
  local body = '{"sentAt":"2026-11-28T10:00:00.500Z","batch":[' .. table.concat(items, ",") .. ']}'
  return wrk.format("POST", path, headers, body)
end
