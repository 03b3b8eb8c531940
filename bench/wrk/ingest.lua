-- Vendor delivery receipts, each for a new message: alternately a Genesys receipt (form
-- POST) and a SAP Digital Interconnect notification (GET); one in five is a bounce.
-- Script argument 1: a run prefix, so message ids are unique across runs.
dofile("bench/wrk/summary.lua")

local threads = {}
local counter = 0
local prefix = "run"
local sapdi_date, sapdi_time = "", ""
local form_header = {["Content-Type"] = "application/x-www-form-urlencoded"}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  prefix = (args[1] or "run") .. "-" .. tostring(thread_number)
  sapdi_date = os.date("!%d%m%Y")
  sapdi_time = os.date("!%H%M%S")
end

local function genesys(id, bounce)
  local state = bounce and "5&result_code=1" or "2&result_code=0"
  return wrk.format("POST", "/vendors/genesys/delivery-reports", form_header,
    "type=receipt&message_id=g-" .. id .. "&message_state=" .. state)
end

local function sapdi(id, bounce)
  local status = bounce and "0x4503%20unknown%20subscriber" or "delivered"
  return wrk.format("GET", "/api/v1/notifications/set?orderID=s-" .. id .. "&date=" .. sapdi_date ..
    "&time=" .. sapdi_time .. "&msisdn=%2B4915112345678&status=" .. status)
end

function request()
  counter = counter + 1
  local id = prefix .. "-" .. counter
  local bounce = counter % 10 < 2
  if counter % 2 == 0 then
    return genesys(id, bounce)
  end
  return sapdi(id, bounce)
end
