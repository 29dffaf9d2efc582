-- Argo CD health of a secmetrics.io SecurityMetric (docs/argocd-health.md).
-- Health says whether the metric works, not whether it complies: a metric the operator
-- evaluates is Healthy in any state (Compliant, Warning, Breached, or Unknown for an empty
-- population), with its state first in the message. A metric that cannot be evaluated
-- (source unavailable, invalid expression, cost limit exceeded) is Degraded with the Ready
-- condition's reason and message. Until the operator has evaluated the current generation it
-- is Progressing. Lua 5.1, as Argo CD runs it.
local hs = {status = "Progressing", message = "Waiting for the secmetrics operator to evaluate the metric"}
local generation = obj.metadata and obj.metadata.generation
local status = obj.status
if status == nil then
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "Waiting for the secmetrics operator to evaluate generation " .. generation
  return hs
end
local ready = nil
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    end
  end
end
if ready == nil or ready.status == "Unknown" then
  return hs
end
if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = (status.state or "Unknown") .. ": " .. (ready.message or "")
elseif ready.reason == "NoData" then
  -- Evaluated, but nothing to measure: the state is Unknown (never a silent pass).
  hs.status = "Healthy"
  hs.message = "Unknown: " .. (ready.message or "")
else
  hs.status = "Degraded"
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
end
return hs
